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
from typing import Any

import keras
import numpy as np
from keras import ops

from trainer.errors import LoraMismatch

__all__ = [
    "ATTENTION_CLASSES",
    "FactoredLoraDense",
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


def _projection_names(layer: keras.layers.Layer) -> tuple[str, ...] | None:
    """The projection names of an attention layer (subclasses count: tiled attention is one)."""
    for cls in type(layer).__mro__:
        names = ATTENTION_CLASSES.get(cls.__name__)
        if names is not None:
            return names
    return None


def attention_projections(model: keras.Model) -> list[tuple[str, keras.layers.Dense]]:
    """``(key, Dense)`` for every attention projection, in a stable order."""
    found: list[tuple[str, keras.layers.Dense]] = []
    index = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        names = _projection_names(layer)
        if names is None:
            continue
        for attr in names:
            found.append((f"{index:04d}.{attr}", getattr(layer, attr)))
        index += 1
    return found


def _peft_a_init(seed: int) -> keras.initializers.Initializer:
    """PEFT's A init, ``kaiming_uniform_(a=sqrt(5))``: uniform in +-1/sqrt(fan_in).

    B starts at zero, so the model is unchanged at step 0; matching PEFT's A scale makes a
    learning rate mean here what it means in diffusers' LoRA DreamBooth.
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", seed=seed
    )


class FactoredLoraDense(keras.layers.Dense):  # type: ignore[misc]
    """A LoRA ``Dense`` computing ``x K + s (x A) B`` rather than Keras' ``x (K + s A B)``.

    Same function; but autodiff through Keras' merged kernel forms the full ``[in, out]``
    kernel gradient of every adapted projection each step, only to project it onto A and B.
    Kept factored, the gradients of A and B cost rank-sized products.
    """

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not self.lora_enabled:
            return super().call(inputs, training=training)
        x = ops.matmul(inputs, self._kernel)
        low = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
        x = ops.add(x, ops.multiply(low, self.lora_alpha / self.lora_rank))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def enable_lora(model: keras.Model, rank: int, *, alpha: float | None = None, seed: int = 0) -> int:
    """Add rank-``rank`` LoRA to every attention projection; returns how many layers got it."""
    layers = attention_projections(model)
    if not layers:
        raise ValueError(f"{model.name} has no attention projections to adapt")
    for i, (_, dense) in enumerate(layers):
        dense.enable_lora(
            rank,
            lora_alpha=alpha,
            a_initializer=_peft_a_init(seed * 100_003 + i),
        )
        if type(dense) is keras.layers.Dense:
            dense.__class__ = FactoredLoraDense
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
