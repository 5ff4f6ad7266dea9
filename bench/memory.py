"""Training memory at real size: one sd-v1 UNet step per configuration, projected to 512 px.

The real-size sd-v1 UNet (random weights), batch 1 instance + 1 class, on this CPU: LoRA at
256 px, full fine-tuning (weights, gradients and AdamW state: ~14 GB) at 128 px. Memory is
TensorFlow's own count of the bytes its allocator hands out (reset before each measured step),
which is what a GPU would have to hold; a GPU adds its CUDA context
(~0.5 GB, reasoned, not measured here). For each configuration:

- ``static``: weights and optimizer state (counted from the variables); LoRA under mixed
  precision keeps its frozen base in half precision, as the trainer does;
- ``step``: the peak during one step above that: activations kept for the backward pass,
  attention scores, gradients.

Attention is computed rather than measured, because its score matrices grow with the square
of the pixel count and are still small at 128 and 256 px (see :func:`attention_bytes`).

Projection to a resolution r (s = (r / 128)^2, the latent-pixel ratio):

    attn(r)  = sum over levels of layers * kept(level, r) + max over levels of work(level, r)
    step(r)  = g + a*s + attn(r)    g = bytes of the trained weights' gradients, plus under
                                        mixed precision without remat the half-precision
                                        weight copies each layer makes and autodiff keeps
                                        (2 bytes per weight)
                                    a = (step(R) - g - attn(R)) / s(R), from the run at
                                        the highest resolution R measured (LoRA 256 px,
                                        full fine-tuning 128 px by default)
    total(r) = static + step(r)

(everything else a step holds, convolutions, norms, projections, grows with the pixels).
A run at a second resolution (``--lora-res 128,256``) checks the fit: its projection is
printed beside its measurement.

    .venv/bin/python -m bench.memory [--only lora|full] [--lora-res 128,256] [--full-res 128]
                                     [--all]

Ends with ``lora_512_gb: <float>``: the projection for LoRA with this trainer's GPU defaults
(mixed precision, tiled attention, no remat).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench._real_size import peak_rss_bytes, real_spec, real_trainer, real_unet, stand_in_data
from trainer.attention import DEFAULT_QUERY_TILE, use_remat, use_tiled_attention
from trainer.dreambooth import TrainConfig, half_precision_base, set_compute_policy

GB = 1024**3
# Mixed precision is measured as bfloat16: this CPU runs it natively (AVX512-BF16); float16 keeps
# the same 2-byte activations, so the memory figures hold for both.
MIXED = "mixed_bfloat16"
# sd-v1's attention: (layers, heads, head size, token divisor) per UNet level; a level's tokens
# are (r / 8)^2 / divisor. Two down, three up blocks per level, one in the middle.
LEVELS = [(5, 8, 40, 1), (5, 8, 80, 4), (5, 8, 160, 16), (1, 8, 160, 64)]
BATCH = 2  # one instance and one class sample


@dataclass(frozen=True)
class Variant:
    method: str
    precision: str
    attention: str
    remat: bool

    @property
    def label(self) -> str:
        savers = {("kerascv", False): "none", ("tiled", False): "tiled attention"}.get(
            (self.attention, self.remat), "tiled attention + remat"
        )
        return f"{self.method:4s} {self.precision:14s} {savers}"


LORA = [
    Variant("lora", "float32", "kerascv", False),  # before this change
    Variant("lora", "float32", "tiled", True),
    Variant("lora", MIXED, "tiled", False),  # the GPU default for LoRA
    Variant("lora", MIXED, "tiled", True),
]
FULL = [
    Variant("full", "float32", "kerascv", False),  # before this change
    Variant("full", MIXED, "tiled", True),  # the GPU default for full fine-tuning
]
MORE = [  # --all: the savers one at a time
    Variant("lora", "float32", "tiled", False),
    Variant("lora", MIXED, "kerascv", False),
    Variant("full", MIXED, "tiled", False),
]
GPU_LORA_DEFAULT = Variant("lora", MIXED, "tiled", False)


def _memory() -> dict[str, int]:
    return dict(tf.config.experimental.get_memory_info("CPU:0"))


def measure_step(unet: keras.Model, variant: Variant, resolution: int) -> dict[str, float]:
    """Static and step bytes of one training step of ``variant`` on ``unet``."""
    policy = None if variant.precision == "float32" else variant.precision
    set_compute_policy(unet, policy)
    if variant.method == "lora" and policy is not None:  # as make_trainer does for LoRA
        unet = half_precision_base(unet, real_spec(resolution), policy)
    use_tiled_attention(unet, variant.attention == "tiled")
    use_remat(unet, variant.remat)
    config = TrainConfig(
        method=variant.method,  # type: ignore[arg-type]
        steps=2,
        precision=variant.precision,  # type: ignore[arg-type]
        attention=variant.attention,  # type: ignore[arg-type]
        remat=variant.remat,
        jit_compile=False,
        conv="kerascv",  # the GPU default, which these projections are for
    )
    data = stand_in_data(resolution)
    trainer = real_trainer(unet, data, config)
    trained = sum(int(np.prod(v.shape)) for v in trainer.trained_variables)
    dataset = trainer.dataset(data)
    trainer.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)  # trace and first step
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = _memory()["current"]
    # What this run allocated for good: its UNet's weights, LoRA and optimizer state (counted
    # from the variables, so a float32 source kept by the bench does not count).
    held = [*trainer.diffusion_model.weights, *trainer.optimizer.variables]
    static = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in held)
    start = time.perf_counter()
    trainer.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    seconds = time.perf_counter() - start
    peak = _memory()["peak"]
    del trainer, dataset
    gc.collect()
    # Under mixed precision each layer casts its float32 weights to half precision as it runs,
    # and autodiff keeps those copies for the backward pass: 2 bytes per float32 UNet weight.
    # A rematerialised block casts them again in the backward pass and holds one block's at a
    # time (measured: full, mixed, remat at 128 px took 3.76 GB above static, less than
    # gradients plus copies), so remat variants leave them out; the ~55 M weights outside the
    # blocks (in and out, down- and upsampling, time embedding; ~0.1 GB) fall into a*s.
    copies = (
        0
        if policy is None or variant.remat
        else 2
        * sum(
            int(np.prod(v.shape))
            for v in unet.weights
            if v.dtype == "float32" and "lora" not in v.path
        )
    )
    return {
        "static": static,
        "step": peak - before,
        "gradients": 4 * trained,
        "copies": copies,
        "s": seconds,
    }


def attention_bytes(attention: str, precision: str, resolution: int) -> tuple[float, float]:
    """attn(r) of the docstring, without and with rematerialisation; computed, not measured.

    Per self-attention layer of T tokens and H heads, batch B = 2, b bytes per element (4, or 2
    under mixed precision): KerasCV keeps the softmax B*H*T^2*b for the backward pass and while
    a layer runs holds about two more such matrices (scores, their gradient). Tiled attention
    keeps nothing quadratic; while it runs it holds about three float32 B*H*tile*T blocks.
    With remat a block keeps only its inputs, and its attention is held again only while that
    one block is recomputed, so the largest ``kept + work`` counts, once.
    """
    b = 4 if precision == "float32" else 2
    kept_total, work_max, one_block = 0.0, 0.0, 0.0
    for layers, heads, _size, divisor in LEVELS:
        tokens = (resolution // 8) ** 2 // divisor
        if attention == "kerascv":
            kept, work = BATCH * heads * tokens**2 * b, 2 * BATCH * heads * tokens**2 * b
        else:
            kept, work = 0, 3 * BATCH * heads * min(DEFAULT_QUERY_TILE, tokens) * tokens * 4
        kept_total += layers * kept
        work_max = max(work_max, work)
        one_block = max(one_block, kept + work)
    return kept_total + work_max, one_block


def _resolutions(text: str) -> list[int]:
    return sorted({int(r) for r in text.split(",")}, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("lora", "full"), help="measure one method")
    parser.add_argument("--lora-res", default="256", help="LoRA resolutions (e.g. 128,256)")
    parser.add_argument("--full-res", default="128", help="full fine-tuning resolutions")
    parser.add_argument("--all", action="store_true", help="also each saver on its own")
    parser.add_argument("--precision", help="measure only this precision (e.g. mixed_bfloat16)")
    args = parser.parse_args()
    chosen = [*LORA, *FULL, *(MORE if args.all else [])]
    methods = [args.only] if args.only else ["lora", "full"]
    if args.precision:
        chosen = [v for v in chosen if v.precision == args.precision]
    variants = {m: [v for v in chosen if v.method == m] for m in methods}
    resolutions = {"lora": _resolutions(args.lora_res), "full": _resolutions(args.full_res)}
    print("sd-v1 UNet, random weights, batch 1 instance + 1 class, this CPU")

    attn: dict[tuple[str, str, bool, int], float] = {}
    for attention, precision in sorted({(v.attention, v.precision) for v in chosen}):
        for r in (128, 256, 512):
            plain, remat = attention_bytes(attention, precision, r)
            attn[(attention, precision, False, r)] = plain
            attn[(attention, precision, True, r)] = remat
    print("attention alone (computed), attn(r) in GB without / with remat:")
    for (attention, precision, remat, r), value in sorted(attn.items()):
        if not remat:
            print(
                f"  {attention:8s} {precision:14s} {r:4d}px  {value / GB:6.2f} / "
                f"{attn[(attention, precision, True, r)] / GB:6.2f}"
            )

    measured: dict[tuple[Variant, int], dict[str, float]] = {}
    for method in methods:
        for resolution in resolutions[method]:
            keras.backend.clear_session()
            gc.collect()
            unet = real_unet(resolution)
            for variant in variants[method]:
                got = measure_step(unet, variant, resolution)
                measured[(variant, resolution)] = got
                print(
                    f"  {variant.label:44s} {resolution:4d}px  static {got['static'] / GB:5.2f} "
                    f"GB  step +{got['step'] / GB:5.2f} GB  {got['s']:6.1f} s/step",
                    flush=True,
                )
            del unet
            gc.collect()

    print()
    print("projection: total(r) = static + g + a*s + attn(r), s = (r/128)^2 (see the docstring)")
    print(f"{'configuration':44s} {'from':>5s} {'a GB':>6s} {'256px':>7s} {'512px':>7s}  check")
    lora_512 = float("nan")
    for method in methods:
        for variant in variants[method]:
            key = (variant.attention, variant.precision, variant.remat)
            runs = [r for r in resolutions[method] if (variant, r) in measured]
            top = measured[(variant, runs[0])]
            g = top["gradients"] + top["copies"]
            s_top = (runs[0] / 128) ** 2
            a = (top["step"] - g - attn[(*key, runs[0])]) / s_top

            def total(r: int, m: dict[str, float] = top, a: float = a, g: float = g) -> float:
                return m["static"] + g + a * (r / 128) ** 2 + attn[(*key, r)]  # noqa: B023

            check = ""
            for r in runs[1:]:
                m = measured[(variant, r)]
                check += f"{r}px measured {(m['static'] + m['step']) / GB:.2f}, "
                check += f"projected {total(r) / GB:.2f}"
            p512 = total(512)
            if variant == GPU_LORA_DEFAULT:
                lora_512 = p512 / GB
            print(
                f"{variant.label:44s} {runs[0]:5d} {a / GB:6.2f} {total(256) / GB:7.2f} "
                f"{p512 / GB:7.2f}  {check}"
            )
    print(f"process peak RSS {peak_rss_bytes() / GB:.1f} GB")
    print("goals at 512 px: LoRA <= 10 GB, full <= 24 GB (a GPU adds ~0.5 GB CUDA context)")
    print(f"lora_512_gb: {lora_512:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
