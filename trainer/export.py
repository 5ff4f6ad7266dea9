"""Export a trained model to a folder (and the blob store) and load it back onto a base model.

A model folder holds ``model.json`` and one weights file: ``lora.npz`` (the LoRA factors only,
float16 — about 1.6 MB for sd-v1 at rank 4) or ``unet.npz`` (every UNet weight in the model's
fixed variable order, float32: full fine-tuning at 2e-6 moves weights by less than float16 can
represent, so rounding would undo it). LoRA on the text encoder, when trained, rides in
``lora.npz`` under a ``text.`` prefix. ``model.json`` names the base preset and base weights, so
loading onto the wrong base fails loudly instead of producing garbage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.blobs import MODEL_METADATA_FILE, BlobStore, keys
from trainer.dreambooth import DreamBoothTrainer, copy_diffusion_model, copy_text_encoder
from trainer.errors import ModelFormatError
from trainer.lora import apply_lora, extract_lora
from trainer.presets import Preset, build_preset, is_pretrained_tiny

__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "ModelMetadata",
    "export_model",
    "load_model",
    "read_metadata",
    "upload_model",
]

FORMAT = "dreambot-model"
VERSION = 1
METADATA_FILE = MODEL_METADATA_FILE
WEIGHT_FILES = {"lora": "lora.npz", "full": "unet.npz"}
TEXT_PREFIX = "text."


@dataclass(frozen=True)
class ModelMetadata:
    """What ``model.json`` says about a trained model."""

    preset: str
    method: str
    rank: int | None
    identifier: str
    class_name: str
    instance_prompt: str
    resolution: int
    steps: int
    seed: int
    base_seed: int
    base_weights_id: str
    weights_file: str
    sha256: str
    text_encoder_lora: bool = False
    format: str = FORMAT
    version: int = VERSION


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def export_model(
    trainer: DreamBoothTrainer,
    preset: Preset,
    out_dir: Path | str,
    *,
    identifier: str,
    class_name: str,
    instance_prompt: str,
    steps: int,
    base_seed: int = 0,
) -> ModelMetadata:
    """Write the trained weights and ``model.json`` into ``out_dir`` (created if needed)."""
    config = trainer.config
    unet = trainer.diffusion_model
    text = trainer.text_encoder
    if config.method == "lora":
        arrays = extract_lora(unet, dtype="float16")
        if text is not None:
            arrays.update({TEXT_PREFIX + k: v for k, v in extract_lora(text, "float16").items()})
    else:
        arrays = {f"w{i:05d}": np.asarray(w, np.float32) for i, w in enumerate(unet.get_weights())}
    data = _npz_bytes(arrays)
    meta = ModelMetadata(
        preset=preset.name,
        method=config.method,
        rank=config.lora_rank if config.method == "lora" else None,
        identifier=identifier,
        class_name=class_name,
        instance_prompt=instance_prompt,
        resolution=preset.resolution,
        steps=steps,
        seed=config.seed,
        base_seed=base_seed,
        base_weights_id=preset.weights_id,
        weights_file=WEIGHT_FILES[config.method],
        sha256=hashlib.sha256(data).hexdigest(),
        text_encoder_lora=text is not None,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, payload in (
        (meta.weights_file, data),
        (METADATA_FILE, json.dumps(dataclasses.asdict(meta), indent=2).encode()),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(payload)
        tmp.replace(out / name)
    return meta


def read_metadata(model_dir: Path | str) -> ModelMetadata:
    """Parse ``model.json``; a missing or foreign file raises :class:`ModelFormatError`."""
    path = Path(model_dir) / METADATA_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{path} is missing: not a dreambot model folder") from exc
    try:
        raw: Any = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise ModelFormatError(f"{path} is not a version {VERSION} {FORMAT} file")
    if "method" not in raw and "mode" in raw:  # folders written before `mode` became `method`
        raw["method"] = raw.pop("mode")
    fields = {f.name for f in dataclasses.fields(ModelMetadata)}
    try:
        return ModelMetadata(**{k: v for k, v in raw.items() if k in fields})
    except TypeError as exc:
        raise ModelFormatError(f"{path} lacks a field: {exc}") from exc


def _read_weights(model_dir: Path, meta: ModelMetadata) -> dict[str, np.ndarray]:
    path = model_dir / meta.weights_file
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.sha256:
        raise ModelFormatError(f"{path} does not match the sha256 in {METADATA_FILE}")
    with np.load(io.BytesIO(data)) as arrays:
        return {k: arrays[k] for k in arrays.files}


def _full_weights(weights: dict[str, np.ndarray], unet: Any, model_dir: Path) -> list[np.ndarray]:
    """The UNet weights of a full export in model order, checked against ``unet``'s shapes."""
    shapes = [tuple(w.shape) for w in unet.weights]
    names = [f"w{i:05d}" for i in range(len(shapes))]
    if sorted(weights) != names:
        raise ModelFormatError(
            f"{model_dir / WEIGHT_FILES['full']} holds {len(weights)} arrays; the base UNet has "
            f"{len(shapes)} weights"
        )
    for name, shape in zip(names, shapes, strict=True):
        if tuple(weights[name].shape) != shape:
            raise ModelFormatError(
                f"{model_dir / WEIGHT_FILES['full']}: {name} has shape "
                f"{tuple(weights[name].shape)}, the base UNet's weight is {shape}"
            )
    return [weights[name].astype(np.float32) for name in names]


def load_model(
    model_dir: Path | str,
    *,
    base: Preset | None = None,
    weights_dir: Path | str | None = None,
    bpe_path: Path | str | None = None,
    bases_dir: Path | str | None = None,
) -> Preset:
    """A new :class:`Preset` whose UNet carries the trained weights (LoRA merged in).

    ``base`` (the worker's already-loaded base model) is shared, never modified; without it the
    base is built from the metadata's preset, resolution and seed; a pretrained tiny base is the
    one the model names, read from ``bases_dir`` (when it is gone,
    :class:`~trainer.errors.BaseNotFound` says so at once, without fitting a new one). A folder
    that is incomplete, altered or made for another base raises :class:`ModelFormatError` (for
    LoRA factors that do not fit, its user-facing subclass :class:`~trainer.errors.LoraMismatch`).
    """
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    weights = _read_weights(model_dir, meta)
    if base is None:
        # A pretrained tiny base is the one in bases_dir that the model names (never this
        # code's newer one, which could not match); a random one is rebuilt from its seed.
        pretrained = meta.preset == "tiny" and is_pretrained_tiny(meta.base_weights_id)
        base = build_preset(
            meta.preset,
            resolution=meta.resolution,
            weights_dir=weights_dir,
            bpe_path=bpe_path,
            seed=meta.base_seed,
            bases_dir=bases_dir if pretrained else None,
            tiny_base_id=meta.base_weights_id if pretrained else None,
        )
    if (base.name, base.resolution, base.weights_id) != (
        meta.preset,
        meta.resolution,
        meta.base_weights_id,
    ):
        raise ModelFormatError(
            f"model was trained on {meta.preset} ({meta.base_weights_id}, {meta.resolution}px); "
            f"the base given is {base.name} ({base.weights_id}, {base.resolution}px)"
        )
    # Full weights are checked against the base's shapes before building the copy they go into.
    full = _full_weights(weights, base.diffusion_model, model_dir) if meta.method == "full" else []
    unet = copy_diffusion_model(base)
    text_encoder = base.text_encoder
    if meta.method == "lora":
        text = {k[len(TEXT_PREFIX) :]: v for k, v in weights.items() if k.startswith(TEXT_PREFIX)}
        apply_lora(unet, {k: v for k, v in weights.items() if not k.startswith(TEXT_PREFIX)})
        if text:
            text_encoder = copy_text_encoder(base)
            apply_lora(text_encoder, text)
    else:
        unet.set_weights(full)
    return dataclasses.replace(
        base, diffusion_model=unet, text_encoder=text_encoder, _posterior=None
    )


def upload_model(model_dir: Path | str, store: BlobStore, model_id: str) -> list[str]:
    """Copy a model folder into ``models/<model_id>/``; ``model.json`` goes last."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    written = []
    for name in (meta.weights_file, METADATA_FILE):
        key = keys.model(model_id, name)
        store.put_file(key, str(model_dir / name))
        written.append(key)
    return written
