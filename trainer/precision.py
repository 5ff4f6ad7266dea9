"""Where and how a UNet trains: device defaults, compute precision, a half-precision base.

:func:`device_defaults` fills the precision, XLA, attention, remat and conv options that a
:class:`~trainer.dreambooth.TrainConfig` leaves unset.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import tensorflow as tf

from trainer.presets import build_diffusion_model

__all__ = [
    "device_defaults",
    "gpu_compute_capability",
    "half_precision_base",
    "set_compute_policy",
]


@functools.cache
def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, or None when TensorFlow sees no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    major, minor = details.get("compute_capability", (0, 0))
    return int(major), int(minor)


def device_defaults(method: str) -> dict[str, Any]:
    """Precision, XLA, attention, rematerialisation and convolution for this device and method.

    CPU (measured at real size, sd-v1 UNet, bench/train_step.py --real and bench/memory.py):
    float32 (half precision is emulated there), no XLA (with KerasCV's convolutions it compiled
    for ~100 s and then ran a LoRA step at 0.5x the plain graph's speed; with small-map
    convolutions as matrix products it is 1.16x faster per step at 128 px, but still compiles
    for minutes first, and at 512 px most of the work is convolutions on large maps, which XLA
    runs with its own slow CPU kernels: reasoned, not measured at 512 px), tiled attention
    (never slower, far less memory), no rematerialisation (it only costs time where memory is
    plentiful), and small-map convolutions as matrix products (:mod:`trainer.smallconv`: the
    LoRA step at 128 px took 2.1 s instead of 3.7 s, same result to float rounding).

    GPU (reasoned, not measured here): mixed precision, bfloat16 on Ampere and newer (compute
    capability 8+, no loss scaling needed) and float16 with loss scaling before; tiled attention;
    no XLA, because XLA's common-subexpression pass may merge a rematerialised block back into
    the forward pass and undo the saving; rematerialisation on for full fine-tuning, where
    weights, gradients and AdamW state already take ~14 GB of a 24 GB card; KerasCV's
    convolutions, because cuDNN's small-map kernels do not have oneDNN's weakness and the
    rewrite's shifted copies would only add memory traffic there.
    """
    capability = gpu_compute_capability()
    if capability is None:
        return {
            "precision": "float32",
            "jit_compile": False,
            "attention": "tiled",
            "remat": False,
            "conv": "matmul",
        }
    precision = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    return {
        "precision": precision,
        "jit_compile": False,
        "attention": "tiled",
        "remat": method == "full",
        "conv": "kerascv",
    }


def set_compute_policy(model: keras.Model, dtype_policy: str | None) -> None:
    """Switch a built model's layers to ``dtype_policy`` (variables stay float32)."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layer.dtype_policy = dtype_policy or "float32"


def half_precision_base(source: keras.Model, spec: Any, dtype_policy: str) -> keras.Model:
    """A UNet whose frozen weights are stored in ``dtype_policy``'s compute dtype.

    For LoRA under mixed precision, as diffusers does with its ``weight_dtype``: the base never
    trains, so a float32 master copy only costs memory (3.4 GB at real size) and every layer
    would cast it to half precision on each call anyway (another 1.7 GB kept for the backward
    pass). Variables created later (the LoRA factors) are float32, computing in half precision.
    """
    half = dtype_policy.removeprefix("mixed_")
    unet = build_diffusion_model(spec, dtype_policy=half)
    base = [w for w in source.weights if "lora" not in w.path]  # the base only, never LoRA
    for target, weight in zip(unet.weights, base, strict=True):
        target.assign(tf.cast(weight.value, target.dtype))
    set_compute_policy(unet, dtype_policy)
    return unet
