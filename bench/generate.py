"""Images per second: our sampler against KerasCV's own ``StableDiffusion.text_to_image``.

Both run the same preset weights (``tiny`` by default) in one process, same batch size, steps
and guidance; one warm-up call each is excluded (tracing), then calls alternate so machine load
hits both alike. KerasCV's pipeline comes from ``trainer.presets.kerascv_pipeline`` (the tiny
models swapped into a ``StableDiffusion``). Before timing, both are given the same starting
noise and pad id to show they draw the same images. The last line is ``speedup: <x>x``.

    .venv/bin/python bench/generate.py [--batch 2] [--steps 20] [--repeats 5] [--xla]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trainer  # noqa: F401  (pins the Keras backend)

__all__ = ["main"]

PROMPT = "a photo of sks dog"
KERASCV_PAD_ID = 49407  # what KerasCV's encode_text pads with, so the draws can be compared


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--xla", action="store_true", help="also time our sampler under XLA")
    args = parser.parse_args(argv)

    import numpy as np

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
    diff = np.abs(ours_img.astype(np.int16) - np.asarray(theirs_img).astype(np.int16))

    samplers = {"ours (tf.function)": Sampler.from_components(preset)}
    if args.xla:
        samplers["ours (tf.function + XLA)"] = Sampler.from_components(preset, jit_compile=True)
    calls: dict[str, Callable[[], object]] = {
        name: (
            lambda s=sampler: s.generate(
                PROMPT, seeds=seeds, steps=args.steps, guidance=args.guidance
            )
        )
        for name, sampler in samplers.items()
    }
    calls["KerasCV text_to_image"] = _quiet(
        lambda: pipeline.text_to_image(
            PROMPT,
            batch_size=args.batch,
            num_steps=args.steps,
            unconditional_guidance_scale=args.guidance,
            seed=1,
        )
    )
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
    print(
        "KerasCV's UNet predict_on_batch jit_compile: "
        f"{preset.diffusion_model.jit_compile} (ours: off unless '(XLA)')"
    )
    if args.xla:
        xla_diff = np.abs(
            np.asarray(warm["ours (tf.function + XLA)"]).astype(np.int16)
            - np.asarray(warm["ours (tf.function)"]).astype(np.int16)
        )
        print(f"XLA vs tf.function: max pixel difference {int(xla_diff.max())}")
    rates: dict[str, float] = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        rates[name] = args.batch / median
        print(
            f"{name:28s} {rates[name]:8.2f} images/s  "
            f"(median {median * 1000:.1f} ms per call, min {min(times) * 1000:.1f} ms)"
        )
    speedup = rates["ours (tf.function)"] / rates["KerasCV text_to_image"]
    print(f"speedup: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
