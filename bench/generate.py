"""Images per second: our sampler against KerasCV's own ``StableDiffusion.text_to_image``.

Both run the same preset weights (``tiny`` by default) in one process with the same batch size,
steps and guidance. One warm-up call each is excluded (tracing); then calls alternate so machine
load hits both alike. These cores are shared with other jobs, so the headline compares each
side's fastest call (the least disturbed measure of its own cost); medians are printed too.
KerasCV's pipeline comes from ``trainer.presets.kerascv_pipeline`` (the preset's models swapped
into a ``StableDiffusion``). Before timing, both get the same starting noise and pad id to show
that they draw the same images. The last line is ``speedup: <x>x``.

    .venv/bin/python -m bench.generate [--batch 2] [--steps 20] [--repeats 7] [--xla]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import trainer  # noqa: F401  (pins the Keras backend)

__all__ = ["main"]

PROMPT = "a photo of sks dog"
KERASCV_PAD_ID = 49407  # what KerasCV's encode_text pads with, so the draws can be compared
OURS = "ours (tf.function)"
OURS_XLA = "ours (tf.function, XLA)"
KERASCV = "KerasCV text_to_image"
KERASCV_XLA = "KerasCV text_to_image (XLA)"


def _quiet(call: Callable[[], object]) -> Callable[[], object]:
    """KerasCV prints a progress bar per call; keep the bench output readable."""

    def run() -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return call()

    return run


def _time(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _kerascv_call(pipeline: Any, args: argparse.Namespace) -> Callable[[], object]:
    return _quiet(
        lambda: pipeline.text_to_image(
            PROMPT,
            batch_size=args.batch,
            num_steps=args.steps,
            unconditional_guidance_scale=args.guidance,
            seed=1,
        )
    )


def _pixels_diff(a: object, b: object) -> Any:
    import numpy as np

    return np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--xla",
        action="store_true",
        help="also compare under XLA: ours with jit_compile, KerasCV with its sub-models "
        "compiled with jit_compile=True (its own default when it builds them)",
    )
    args = parser.parse_args(argv)

    from trainer.presets import build_preset, kerascv_pipeline
    from trainer.sampler import Sampler

    preset = build_preset(args.preset, random_weights=args.preset != "tiny")
    pipeline = kerascv_pipeline(preset)
    seeds = list(range(1, args.batch + 1))

    same = Sampler.from_components(preset, pad_id=KERASCV_PAD_ID)
    noise = same.initial_noise(seeds)
    ours_img = same.generate(PROMPT, seeds=seeds, steps=args.steps, guidance=args.guidance)
    theirs_img = _quiet(
        lambda: pipeline.generate_image(
            pipeline.encode_text(PROMPT),
            negative_prompt="",
            batch_size=args.batch,
            num_steps=args.steps,
            unconditional_guidance_scale=args.guidance,
            diffusion_noise=noise,
        )
    )()
    diff = _pixels_diff(ours_img, theirs_img)

    def ours(sampler: Sampler) -> Callable[[], object]:
        return lambda: sampler.generate(
            PROMPT, seeds=seeds, steps=args.steps, guidance=args.guidance
        )

    calls: dict[str, Callable[[], object]] = {
        OURS: ours(Sampler.from_components(preset, jit_compile=False)),
        KERASCV: _kerascv_call(pipeline, args),
    }
    if args.xla:
        # A second copy of the same weights, so compiling it for KerasCV leaves the first alone.
        twin = build_preset(args.preset, random_weights=args.preset != "tiny")
        for name in ("text_encoder", "diffusion_model", "decoder"):
            model = getattr(twin, name)
            model.set_weights(getattr(preset, name).get_weights())
            model.compile(jit_compile=True)
        calls[OURS_XLA] = ours(Sampler.from_components(preset, jit_compile=True))
        calls[KERASCV_XLA] = _kerascv_call(kerascv_pipeline(twin), args)
    warm = {name: call() for name, call in calls.items()}  # warm-up (tracing) is not timed
    seconds = _time(calls, args.repeats)

    print(
        f"preset {preset.name} ({preset.resolution}px), batch {args.batch}, steps {args.steps}, "
        f"guidance {args.guidance}, {args.repeats} timed calls each after one warm-up"
    )
    print(
        f"same noise, same pad id: max pixel difference ours vs KerasCV = {int(diff.max())} "
        f"(mean {float(diff.mean()):.4f})"
    )
    if args.xla:
        xla_diff = int(_pixels_diff(warm[OURS_XLA], warm[OURS]).max())
        print(f"XLA vs tf.function: max pixel difference {xla_diff}")
    best = {name: min(times) for name, times in seconds.items()}
    for name, times in seconds.items():
        median = statistics.median(times)
        print(
            f"{name:34s} best {args.batch / best[name]:6.2f} images/s ({best[name] * 1000:7.1f} ms)"
            f"  median {args.batch / median:6.2f} images/s ({median * 1000:7.1f} ms)"
        )
    median_speedup = statistics.median(seconds[KERASCV]) / statistics.median(seconds[OURS])
    print(f"median-based speedup, tf.function vs KerasCV: {median_speedup:.2f}x")
    if args.xla:
        print(f"best-call speedup, both under XLA: {best[KERASCV_XLA] / best[OURS_XLA]:.2f}x")
    print(f"speedup: {best[KERASCV] / best[OURS]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
