"""LoRA on the attention projections: enable, list, extract, and merge into a plain model.

Keras 3 ``Dense.enable_lora`` adds ``lora_kernel_a`` / ``lora_kernel_b`` and freezes the kernel;
the trainer then trains only variables whose path contains ``lora``. Export keys each projection
by its position in a fixed walk of the model (not by Keras' auto-generated layer names, which
depend on what else the process built), so a file written in one process applies in another.

Factors that do not fit a model (a file trained on another base) raise
:class:`~trainer.errors.LoraMismatch`, a user-facing error. Asking to adapt or extract a model
without attention layers is a programming error and stays a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from trainer.errors import LoraMismatch

__all__ = [
    "ATTENTION_CLASSES",
    "apply_lora",
    "attention_projections",
    "enable_lora",
    "extract_lora",
    "lora_variables",
]

# Attention layers (KerasCV classes, matched by name so this module does not import KerasCV)
# and the Dense projections LoRA adapts inside them.
ATTENTION_CLASSES: dict[str, tuple[str, ...]] = {
    "CrossAttention": ("to_q", "to_k", "to_v", "out_proj"),
    "CLIPAttention": ("q_proj", "k_proj", "v_proj", "out_proj"),
}


def attention_projections(model: keras.Model) -> list[tuple[str, keras.layers.Dense]]:
    """``(key, Dense)`` for every attention projection, in a stable order."""
    found: list[tuple[str, keras.layers.Dense]] = []
    index = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        names = ATTENTION_CLASSES.get(type(layer).__name__)
        if names is None:
            continue
        for attr in names:
            found.append((f"{index:04d}.{attr}", getattr(layer, attr)))
        index += 1
    return found


def enable_lora(model: keras.Model, rank: int, *, alpha: float | None = None, seed: int = 0) -> int:
    """Add rank-``rank`` LoRA to every attention projection; returns how many layers got it."""
    layers = attention_projections(model)
    if not layers:
        raise ValueError(f"{model.name} has no attention projections to adapt")
    for i, (_, dense) in enumerate(layers):
        dense.enable_lora(
            rank,
            lora_alpha=alpha,
            a_initializer=keras.initializers.HeUniform(seed=seed * 100_003 + i),
        )
    return len(layers)


def lora_variables(model: keras.Model) -> list[keras.Variable]:
    """The trainable LoRA variables (A and B of every adapted projection)."""
    return [v for v in model.trainable_variables if "lora" in v.path]


def extract_lora(model: keras.Model, dtype: str = "float16") -> dict[str, np.ndarray]:
    """LoRA factors keyed ``<index>.<proj>.a|b``, plus a per-layer ``.scale`` (alpha / rank)."""
    out: dict[str, np.ndarray] = {}
    for key, dense in attention_projections(model):
        if not getattr(dense, "lora_enabled", False):
            continue
        out[f"{key}.a"] = np.asarray(dense.lora_kernel_a.numpy(), dtype=dtype)
        out[f"{key}.b"] = np.asarray(dense.lora_kernel_b.numpy(), dtype=dtype)
        out[f"{key}.scale"] = np.asarray(dense.lora_alpha / dense.lora_rank, dtype=np.float32)
    if not out:
        raise ValueError(f"{model.name} has no LoRA weights to extract")
    return out


def apply_lora(model: keras.Model, factors: Mapping[str, np.ndarray]) -> int:
    """Merge LoRA factors into the kernels of a plain model (kernel += scale * A @ B).

    A merged model runs exactly like a LoRA-enabled one at no extra cost per call. Every factor
    is checked before any kernel changes, so factors that do not fit raise
    :class:`LoraMismatch` and leave the model as it was.
    """
    layers = dict(attention_projections(model))
    wanted = sorted({k.rsplit(".", 1)[0] for k in factors})
    missing = [key for key in wanted if key not in layers]
    if missing:
        raise LoraMismatch(
            f"The LoRA weights adapt {len(missing)} attention layers that {model.name} does not "
            f"have (e.g. {', '.join(missing[:3])}): they were trained on a different base model."
        )
    deltas = []
    for key in wanted:
        parts = [f"{key}.{part}" for part in ("a", "b", "scale")]
        absent = [name for name in parts if name not in factors]
        if absent:
            raise LoraMismatch(
                f"The LoRA weights are incomplete: {', '.join(absent)} is missing, so the file "
                "was cut short or edited."
            )
        a = np.asarray(factors[parts[0]], dtype=np.float32)
        b = np.asarray(factors[parts[1]], dtype=np.float32)
        kernel = layers[key]._kernel
        fits = a.ndim == b.ndim == 2 and a.shape[1] == b.shape[0]
        if not fits or (a.shape[0], b.shape[1]) != tuple(kernel.shape):
            raise LoraMismatch(
                f"The LoRA weights for {key} have shape {a.shape} x {b.shape}, but that layer of "
                f"{model.name} is {tuple(kernel.shape)}: they were trained on a different base "
                "model."
            )
        deltas.append((kernel, float(factors[parts[2]]) * (a @ b)))
    for kernel, delta in deltas:
        kernel.assign(np.asarray(kernel.numpy(), dtype=np.float32) + delta)
    return len(wanted)
