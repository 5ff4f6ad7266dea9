"""What a checkpoint records about its run, and the plain words for what differs.

A resumed run must train the same thing as the run that wrote the checkpoint: the same subject
(identifier, class word, photos, class images), base model and resolution, and the same
settings that change what a step computes. Intervals, XLA and memory savers may change.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.dreambooth import TrainConfig

__all__ = ["TrainedFrom", "differences", "images_digest", "run_record"]

# What a run did before its field was recorded: a checkpoint without the key trained this way.
_BEFORE_RECORDED = {"empty_prompt_rate": 0.0, "empty_data": None}

# Config fields that change what training computes (not XLA, memory savers or intervals).
_CONFIG_FIELDS = (
    "method",
    "batch_size",
    "seed",
    "precision",
    "prior_loss_weight",
    "empty_prompt_rate",
    "beta_1",
    "beta_2",
    "weight_decay",
    "epsilon",
    "max_grad_norm",
)
_LORA_FIELDS = ("lora_rank", "lora_alpha", "train_text_encoder")
# Plain words for every recorded field, in the order differences are listed.
_LABELS = {
    "identifier": "identifier",
    "class_name": "class word",
    "weights_id": "base model weights",
    "resolution": "resolution (px)",
    "instance_data": "subject photos",
    "class_data": "class images",
    "empty_data": "empty-prompt images",
    "method": "method",
    "learning_rate": "learning rate",
    "precision": "precision",
    "batch_size": "batch size",
    "lora_rank": "LoRA rank",
    "lora_alpha": "LoRA alpha",
    "train_text_encoder": "training the text encoder",
    "seed": "seed",
    "prior_loss_weight": "prior-preservation loss weight",
    "empty_prompt_rate": "share of class samples on empty-prompt images",
    "beta_1": "AdamW beta_1",
    "beta_2": "AdamW beta_2",
    "weight_decay": "weight decay",
    "epsilon": "AdamW epsilon",
    "max_grad_norm": "gradient clipping norm",
}


@dataclass(frozen=True)
class TrainedFrom:
    """What a run trains from besides its config: subject, base model and data hashes."""

    identifier: str
    class_name: str
    weights_id: str
    resolution: int
    instance_data: dict[str, Any]
    class_data: dict[str, Any] | None
    empty_data: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        *,
        identifier: str,
        class_name: str,
        weights_id: str,
        resolution: int,
        instance_images: np.ndarray,
        class_images: np.ndarray | None,
        empty_images: np.ndarray | None = None,
    ) -> TrainedFrom:
        def digest(images: np.ndarray | None) -> dict[str, Any] | None:
            return None if images is None or len(images) == 0 else images_digest(images)

        return cls(
            identifier=identifier,
            class_name=class_name,
            weights_id=weights_id,
            resolution=int(resolution),
            instance_data=images_digest(instance_images),
            class_data=digest(class_images),
            empty_data=digest(empty_images),
        )


def images_digest(images: np.ndarray) -> dict[str, Any]:
    """Count and sha256 of the decoded images (uint8 pixels, shape included).

    Pixels, not the VAE posteriors computed from them: those float results differ in their last
    bits between GPUs (and between cuDNN algorithm picks), which would refuse an honest resume.
    The base weights id and resolution recorded beside this pin down the encoding.
    """
    pixels = np.ascontiguousarray(images)
    sha = hashlib.sha256(f"{pixels.dtype.str}{pixels.shape}".encode())
    sha.update(pixels.data)
    return {"count": int(pixels.shape[0]), "sha256": sha.hexdigest()}


def run_record(config: TrainConfig, origin: TrainedFrom | None = None) -> dict[str, Any]:
    """What a checkpoint records about its run, as JSON-ready values."""
    record: dict[str, Any] = dataclasses.asdict(origin) if origin is not None else {}
    fields = dataclasses.asdict(config)
    record.update({k: fields[k] for k in _CONFIG_FIELDS})
    lora = config.method == "lora"
    record.update({k: fields[k] if lora else None for k in _LORA_FIELDS})
    record["learning_rate"] = config.lr
    return record


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _difference(key: str, old: Any, new: Any) -> str:
    label = _LABELS.get(key, key)
    if key.endswith("_data") and isinstance(old, dict) and isinstance(new, dict):
        if old.get("count") == new.get("count"):
            return f"{label}: different ones now (same number, {new.get('count')})"
        return f"{label}: {old.get('count')} then, {new.get('count')} now"
    if key.endswith("_data"):
        old, new = (v.get("count") if isinstance(v, dict) else v for v in (old, new))
    return f"{label}: {_show(old)} then, {_show(new)} now"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per key of ``new`` whose value ``old`` does not share, in the labels' order."""
    order = {key: i for i, key in enumerate(_LABELS)}
    old = {**_BEFORE_RECORDED, **old}
    return [
        _difference(key, old.get(key), new[key])
        for key in sorted(new, key=lambda k: order.get(k, len(order)))
        if old.get(key) != new[key]
    ]
