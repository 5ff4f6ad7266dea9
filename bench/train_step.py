"""Training-step benchmark: our DreamBooth step against a seed-style step, same preset and batch.

The seed-style step is the tutorial's algorithm written for comparison: it encodes the images
with the VAE every step, embeds each sample's timestep through ``tf.map_fn`` and caches nothing.
Ours reads cached VAE posteriors and embeds timesteps in one vectorised op; it runs with the
trainer's defaults for this device and again with the other XLA setting. The seed-style step
runs as written (Keras' default on a CPU: no XLA), or under XLA with ``--seed-xla``. All run through
``keras.Model.fit`` on the tiny preset, in this one process, after a warm-up that absorbs tracing
and compiling, in interleaved rounds (best round counts), so a shared machine's changing load hits
all alike. A round's rate is its steady state: from the end of its first step to the end of its
last, because a real run pays a ``fit`` call's setup once, not once per few steps.

    .venv/bin/python -m bench.train_step [--steps 60] [--batch 2] [--methods lora,full] [--seed-xla]
    .venv/bin/python -m bench.train_step --real [--methods lora,full] [--no-xla] [--full-xla]

Prints steps/s and peak RSS (of the whole process so far) for each, and last
``speedup: <float>x``: our default step against the seed-style step, both LoRA.

``--real`` uses the real-size sd-v1 UNet (random init) at 128 px, batch 1 instance + 1 class:
the seed-style step (with a real-size VAE encoder) and ours, LoRA and full fine-tuning, each
with and without XLA (full with XLA only with ``--full-xla``: it needs far more memory; full
fine-tuning's phases each run in a child process, so one's ~14 GB are given back before the
next), and ends with ``real_speedup: <float>x``: our default step against the seed-style step,
LoRA. That half is in ``bench/train_step_real.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from trainer.data import encode_training_data
from trainer.dreambooth import TrainConfig, copy_diffusion_model, make_trainer
from trainer.lora import enable_lora, lora_variables
from trainer.presets import Preset, build_preset


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seed_timestep_embedding(t: tf.Tensor, dim: int = 320) -> tf.Tensor:
    half = dim // 2
    freqs = tf.exp(-np.log(10000.0) * tf.range(0, half, dtype=tf.float32) / half)
    args = tf.convert_to_tensor([t], dtype=tf.float32) * freqs
    return tf.reshape(tf.concat([tf.cos(args), tf.sin(args)], 0), [1, -1])


class SeedStyleTrainer(keras.Model):  # type: ignore[misc]
    """The tutorial's step: VAE encode, map_fn timestep embedding, clip, AdamW.

    Trains every UNet weight (the tutorial's method) or, with ``lora``, only LoRA factors, so
    each of our methods has a same-method baseline.
    """

    def __init__(self, preset: Preset, unet: keras.Model, lora: bool = False) -> None:
        super().__init__()
        self.unet = unet
        if lora and not lora_variables(unet):
            enable_lora(unet, 4)
        self.lora = lora
        self.prior_loss_weight = 1.0
        self.vae = keras.Model(preset.image_encoder.inputs, preset.image_encoder.layers[-2].output)
        self.alphas = tf.constant(preset.alphas_cumprod, tf.float32)
        self.scale = preset.latent_scale
        self.built = True

    @property
    def variables_to_train(self) -> list[keras.Variable]:
        if self.lora:
            return lora_variables(self.unet)
        return list(self.unet.trainable_variables)

    def train_step(self, data: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
        images, context = data
        batch = tf.shape(images)[0]
        posterior = self.vae(images, training=False)
        mean, logvar = tf.split(posterior, 2, axis=-1)
        latents = (mean + tf.exp(0.5 * logvar) * tf.random.normal(tf.shape(mean))) * self.scale
        noise = tf.random.normal(tf.shape(latents))
        timesteps = tf.random.uniform([batch], 0, 1000, dtype=tf.int64)
        alpha = tf.reshape(tf.gather(self.alphas, timesteps), (-1, 1, 1, 1))
        noisy = tf.sqrt(alpha) * latents + tf.sqrt(1 - alpha) * noise
        t_emb = tf.map_fn(
            lambda t: _seed_timestep_embedding(t), timesteps, fn_output_signature=tf.float32
        )
        t_emb = tf.squeeze(t_emb, 1)
        with tf.GradientTape() as tape:
            pred = self.unet([noisy, t_emb, context], training=True)
            pred, pred_prior = tf.split(pred, 2, axis=0)
            target, target_prior = tf.split(noise, 2, axis=0)
            loss = tf.reduce_mean((target - pred) ** 2)
            loss += self.prior_loss_weight * tf.reduce_mean((target_prior - pred_prior) ** 2)
        variables = self.variables_to_train
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        self.optimizer.apply(grads, variables)
        return {"loss": loss}


def seed_dataset(preset: Preset, inst: np.ndarray, cls: np.ndarray, batch: int) -> tf.data.Dataset:
    """Pixels every step: random flips, instance repeated to the class length, contexts."""
    contexts = np.asarray(preset.encode_prompts(["a photo of sks dog", "a photo of dog"]))
    n = len(cls)
    inst_rep = inst[np.arange(n) % len(inst)].astype(np.float32) / 127.5 - 1
    cls_f = cls.astype(np.float32) / 127.5 - 1
    flip = keras.layers.RandomFlip("horizontal")

    def pair(i: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return flip(i), flip(c)

    ds = tf.data.Dataset.from_tensor_slices((inst_rep, cls_f)).repeat().batch(batch)
    ds = ds.map(pair)

    def join(i: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ctx = tf.concat(
            [tf.repeat(contexts[:1], batch, 0), tf.repeat(contexts[1:], batch, 0)], axis=0
        )
        return tf.concat([i, c], axis=0), ctx

    return ds.map(join).prefetch(2)


class _StepClock(keras.callbacks.Callback):  # type: ignore[misc]
    """Wall and CPU time at the end of every step of a ``fit`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))


def steady_fit(model: keras.Model, dataset: Any, steps: int) -> tuple[float, float]:
    """Steps/s and CPU s/step from the first step's end to the last's.

    Leaves out what one ``fit`` call costs once (iterator and callback setup, a few hundred ms),
    which a real run of hundreds of steps in one call pays once and a short timing round would
    count against every step.
    """
    clock = _StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[clock])
    (w0, c0), (w1, c1) = clock.marks[0], clock.marks[-1]
    return steps / (w1 - w0), (c1 - c0) / steps


def time_rounds(
    runs: dict[str, tuple[keras.Model, Any]], steps: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Best steady-state steps/s and median CPU seconds per step of each run, interleaved.

    This machine is shared, so its load changes from minute to minute; running the variants in
    alternating rounds and keeping each one's best round compares them under the same load.
    """
    for model, dataset in runs.values():
        model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)  # trace, compile, warm up
    per = max(2, steps // rounds)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, dataset) in runs.items():
            sps, cpu_s = steady_fit(model, dataset, per)
            wall[name].append(sps)
            cpu[name].append(cpu_s)
    return {name: (max(wall[name]), float(np.median(cpu[name]))) for name in runs}


def synthetic(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def bench_tiny(steps: int, batch: int, methods: list[str], seed_xla: bool, rounds: int) -> None:
    preset = build_preset("tiny", seed=0)
    inst, cls = synthetic(4, 1), synthetic(8, 2)
    seed_how = "XLA" if seed_xla else "as written, no XLA"
    print(f"tiny preset, batch {batch} instance + {batch} class, {steps} timed steps per variant")
    default_jit = TrainConfig().jit_compile
    other = "without XLA" if default_jit else "with XLA"
    print(f"seed-style step: {seed_how}; our step: default config, and again {other}")

    empty = synthetic(8, 3)  # stand-ins for the base's empty-prompt images (full trains on them)
    data = encode_training_data(preset, inst, "a photo of sks dog", cls, "a photo of dog", empty)
    runs: dict[str, tuple[keras.Model, Any]] = {}
    kinds: dict[str, tuple[str, str]] = {}  # run name -> (seed | plain | ours, method)
    for method in methods:
        seed = SeedStyleTrainer(preset, copy_diffusion_model(preset), lora=method == "lora")
        opt = TrainConfig(method=method).make_optimizer()
        opt.build(seed.variables_to_train)
        seed.compile(optimizer=opt, jit_compile=seed_xla)
        runs[f"seed-style step ({method})"] = (seed, seed_dataset(preset, inst, cls, batch))
        kinds[f"seed-style step ({method})"] = ("seed", method)
        for jit in (False, True):
            config = TrainConfig(method=method, steps=steps, batch_size=batch, jit_compile=jit)
            label = "default" if jit == default_jit else ("XLA" if jit else "no XLA")
            name = f"our step, {label} ({method})"
            trainer = make_trainer(preset, data, config)
            runs[name] = (trainer, trainer.dataset(data))
            kinds[name] = ("ours" if jit == default_jit else "other", method)
    print(f"models built, peak RSS {peak_rss_mb():.0f} MB; timing {rounds} interleaved rounds")
    timed = time_rounds(runs, steps, rounds)
    sps_of = {kinds[name]: sps for name, (sps, _) in timed.items()}
    seed_sps = {method: sps for (kind, method), sps in sps_of.items() if kind == "seed"}
    ours = {method: sps for (kind, method), sps in sps_of.items() if kind == "ours"}
    for name, (sps, cpu) in timed.items():
        kind, method = kinds[name]
        ratio = "" if kind == "seed" else f"   ({sps / seed_sps[method]:.2f}x the seed-style step)"
        print(f"{name:26s} {sps:6.2f} steps/s   {cpu * 1000:6.0f} CPU ms/step{ratio}")
    print(f"peak RSS of the whole run: {peak_rss_mb():.0f} MB")
    if "lora" in ours and "full" in seed_sps:
        print(
            f"our default (lora) vs the seed's own algorithm (full): "
            f"{ours['lora'] / seed_sps['full']:.2f}x"
        )
    method = "lora" if "lora" in ours else methods[0]
    print(f"speedup below = our default step ({method}) against the seed-style step in that method")
    print(f"speedup: {ours[method] / seed_sps[method]:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed steps per variant (60; --real: 6)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--methods", default="lora,full", help="comma-separated: lora,full")
    parser.add_argument(
        "--seed-xla", action="store_true", help="XLA-compile the seed-style step too"
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    parser.add_argument("--real", action="store_true", help="real-size sd-v1 UNet at 128 px")
    parser.add_argument(
        "--no-xla", dest="xla", action="store_false", help="--real: skip the XLA variants"
    )
    parser.add_argument(
        "--full-xla", action="store_true", help="--real: XLA variants of full fine-tuning too"
    )
    parser.add_argument("--phase", choices=("seed", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.real:  # imported here: it imports this module's seed-style step
        from bench.train_step_real import bench_real, run_phase

    if args.real and args.phase:  # one phase, in a child process of bench_real
        run_phase(args.methods, args.phase, args.steps or 6, args.xla)
    elif args.real:
        methods = [m for m in args.methods.split(",") if m in ("lora", "full")] or ["lora"]
        bench_real(args.steps or 6, min(args.rounds, 3), methods, args.xla, args.full_xla)
    else:
        methods = [m for m in args.methods.split(",") if m in ("lora", "full")] or ["lora"]
        bench_tiny(args.steps or 60, args.batch, methods, args.seed_xla, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
