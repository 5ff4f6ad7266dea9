"""Real-size half of ``bench/train_step.py``: sd-v1's UNet (random init) at 128 px, on this CPU.

Run through ``bench.train_step --real`` (see there). The seed-style step (with a real-size VAE
encoder) and ours, LoRA and full fine-tuning, each with and without XLA. LoRA's variants fit in
one process and are timed in interleaved rounds; full fine-tuning holds ~14 GB per variant, so
each of its phases runs in a child process (``bench.train_step --real --phase seed|ours``) and
gives its memory back before the next.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bench._real_size import real_trainer, real_unet, stand_in_data
from bench.train_step import SeedStyleTrainer, peak_rss_mb, time_rounds
from trainer.dreambooth import TrainConfig
from trainer.presets import PRESETS, alphas_cumprod_schedule

REAL_RESOLUTION = 128
UNET_PARAMS = 859_520_964


class _SeedFacts:
    """What the seed-style step reads from a preset: its VAE encoder, schedule and scale."""

    def __init__(self, image_encoder: keras.Model) -> None:
        self.image_encoder = image_encoder
        self.alphas_cumprod = alphas_cumprod_schedule()
        self.latent_scale = PRESETS["sd-v1"].latent_scale


def _free() -> None:
    keras.backend.clear_session()
    gc.collect()


def _real_seed_runs(
    method: str, facts: _SeedFacts, images: np.ndarray, contexts: np.ndarray, xla: bool
) -> dict[str, tuple[keras.Model, Any]]:
    """The seed-style step on its own real-size UNet (KerasCV attention, float32)."""
    unet = real_unet(REAL_RESOLUTION)
    runs: dict[str, tuple[keras.Model, Any]] = {}
    for jit in (False, True) if xla else (False,):
        seed = SeedStyleTrainer(facts, unet, lora=method == "lora")  # type: ignore[arg-type]
        opt = TrainConfig(method=method).make_optimizer()  # type: ignore[arg-type]
        opt.build(seed.variables_to_train)
        seed.compile(optimizer=opt, jit_compile=jit)
        ds = tf.data.Dataset.from_tensors((images, contexts)).repeat()
        runs[f"seed-style step{', XLA' if jit else ''} ({method})"] = (seed, ds)
    return runs


def _real_our_runs(method: str, xla: bool) -> dict[str, tuple[keras.Model, Any]]:
    """Our step on its own real-size UNet: the default config, and with XLA."""
    unet = real_unet(REAL_RESOLUTION)
    data = stand_in_data(REAL_RESOLUTION)
    runs: dict[str, tuple[keras.Model, Any]] = {}
    for jit in (False, True) if xla else (False,):
        config = TrainConfig(method=method, steps=1000, jit_compile=jit)  # type: ignore[arg-type]
        default = TrainConfig(method=method).jit_compile  # type: ignore[arg-type]
        label = "default" if jit == default else ("XLA" if jit else "no XLA")
        trainer = real_trainer(unet, data, config)
        runs[f"our step, {label} ({method})"] = (trainer, trainer.dataset(data))
    return runs


def _real_phase(method: str, phase: str, xla: bool) -> dict[str, tuple[keras.Model, Any]]:
    """The runs of one phase (``seed`` or ``ours``) of ``method`` on a fresh real-size UNet."""
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder

    if phase == "ours":
        return _real_our_runs(method, xla)
    rng = np.random.default_rng(0)
    res = REAL_RESOLUTION
    images = rng.uniform(-1, 1, (2, res, res, 3)).astype(np.float32)
    contexts = rng.normal(size=(2, 77, 768)).astype(np.float32)
    facts = _SeedFacts(ImageEncoder(download_weights=False))
    return _real_seed_runs(method, facts, images, contexts, xla)


def _phase_in_child(
    method: str, phase: str, steps: int, xla: bool
) -> dict[str, tuple[float, float]]:
    """Time one phase in a child process, so its ~14 GB are given back before the next."""
    cmd = [sys.executable, "-m", "bench.train_step", "--real", "--methods", method]
    cmd += ["--phase", phase, "--steps", str(steps), *([] if xla else ["--no-xla"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    timed: dict[str, tuple[float, float]] = {}
    for line in out.stdout.splitlines():
        if line.startswith(_PHASE_MARK):
            name, sps, cpu = line[len(_PHASE_MARK) :].rsplit("\t", 2)
            timed[name] = (float(sps), float(cpu))
    if not timed:
        print(out.stdout[-2000:], out.stderr[-2000:], sep="\n")
        raise SystemExit(f"the {phase} phase of {method} failed (exit {out.returncode})")
    return timed


_PHASE_MARK = "phase-result\t"


def run_phase(method: str, phase: str, steps: int, xla: bool) -> None:
    """Child side of :func:`_phase_in_child`: time one phase, print its results for the parent."""
    timed = time_rounds(_real_phase(method, phase, xla), steps, 1)
    for name, (sps, cpu) in timed.items():
        print(f"{_PHASE_MARK}{name}\t{sps}\t{cpu}", flush=True)


def bench_real(steps: int, rounds: int, methods: list[str], xla: bool, full_xla: bool) -> None:
    """Real-size sd-v1 UNet (random init), 128 px, batch 1 instance + 1 class, on this CPU.

    LoRA: the seed-style step and ours each on their own UNet, timed in interleaved rounds.
    Full fine-tuning holds weights, gradients and AdamW state (~14 GB) per variant, so each of
    its phases runs in a child process of its own, one after another.
    """
    defaults = TrainConfig(method="lora")
    print(
        f"real-size sd-v1 UNet ({UNET_PARAMS / 1e6:.0f} M parameters, random init), "
        f"{REAL_RESOLUTION} px, batch 1 instance + 1 class, this CPU; our default: precision "
        f"{defaults.precision}, XLA {'on' if defaults.jit_compile else 'off'}, "
        f"{defaults.attention} attention, remat {'on' if defaults.remat else 'off'}, "
        f"{defaults.conv} convolutions on small maps",
        flush=True,
    )
    ratios: dict[str, float] = {}
    for method in methods:
        timed: dict[str, tuple[float, float]] = {}
        if method == "lora":  # both fit at once: interleave
            runs = {
                k: v
                for phase in ("seed", "ours")
                for k, v in _real_phase(method, phase, xla).items()
            }
            timed = time_rounds(runs, steps, rounds)
            del runs
            _free()
        else:
            for phase in ("seed", "ours"):
                timed.update(_phase_in_child(method, phase, steps, full_xla))
        seed_sps = timed[f"seed-style step ({method})"][0]
        for name, (sps, cpu) in timed.items():
            print(
                f"{name:32s} {1 / sps:6.2f} s/step  {cpu:6.2f} CPU s/step  "
                f"({sps / seed_sps:.2f}x the seed-style step)",
                flush=True,
            )
        print(f"peak RSS of this process: {peak_rss_mb() / 1024:.1f} GB", flush=True)
        ratios[method] = timed[f"our step, default ({method})"][0] / seed_sps
    if len(ratios) > 1:
        print(
            "default step against the seed-style step: "
            + ", ".join(f"{method} {ratio:.2f}x" for method, ratio in ratios.items())
        )
    method = "lora" if "lora" in ratios else methods[0]
    print(f"real_speedup below = our default step ({method}) against the seed-style step")
    print(f"real_speedup: {ratios[method]:.2f}x")
