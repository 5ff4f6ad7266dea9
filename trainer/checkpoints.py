"""Checkpoints: trained weights, optimizer state and step, to a folder or through the blob store.

A checkpoint is two objects: ``state-<step>.npz`` (every trained variable and every optimizer
variable, in their fixed order) and then ``checkpoint.json`` naming it with its sha256. The JSON
is written last, so a crash mid-write leaves the previous checkpoint intact. RNG state needs no
saving: every random draw is keyed on ``(seed, step)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from storage.blobs import BlobStore, keys
from storage.errors import StorageError
from trainer.dreambooth import DreamBoothTrainer
from trainer.errors import CheckpointError

__all__ = [
    "BlobCheckpointStore",
    "CheckpointCallback",
    "CheckpointStore",
    "DirCheckpointStore",
    "load_checkpoint",
    "save_checkpoint",
]

MANIFEST = "checkpoint.json"
# Config fields a resumed run must share with the run that wrote the checkpoint.
_RUN_FIELDS = (
    "method",
    "batch_size",
    "lora_rank",
    "lora_alpha",
    "train_text_encoder",
    "seed",
    "precision",
)


class CheckpointStore(Protocol):
    """Where checkpoint objects go: a local folder, or a job's prefix in the blob store."""

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes | None: ...

    def remove(self, name: str) -> None: ...


class DirCheckpointStore:
    """Checkpoint objects as files in one folder (written to a temp name, then renamed)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.path / name)

    def read(self, name: str) -> bytes | None:
        path = self.path / name
        return path.read_bytes() if path.is_file() else None

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class BlobCheckpointStore:
    """Checkpoint objects under ``checkpoints/<job_id>/`` of a :class:`BlobStore`."""

    def __init__(self, store: BlobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def write(self, name: str, data: bytes) -> None:
        self.store.put(keys.checkpoint(self.job_id, name), data)

    def read(self, name: str) -> bytes | None:
        key = keys.checkpoint(self.job_id, name)
        try:
            return self.store.get(key)
        except StorageError:
            return None

    def remove(self, name: str) -> None:
        self.store.delete(keys.checkpoint(self.job_id, name))


def _run_fields(trainer: DreamBoothTrainer) -> dict[str, Any]:
    config = dataclasses.asdict(trainer.config)
    return {k: config[k] for k in _RUN_FIELDS}


def _state_variables(trainer: DreamBoothTrainer) -> list[keras.Variable]:
    return [*trainer.trained_variables, *trainer.optimizer.variables]


def save_checkpoint(store: CheckpointStore, trainer: DreamBoothTrainer, step: int) -> str:
    """Write the trainer's state after ``step`` steps; returns the state object's name."""
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(_state_variables(trainer))}
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    name = f"state-{step:07d}.npz"
    previous = _read_manifest(store)
    store.write(name, data)
    manifest = {
        "step": step,
        "state": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "variables": len(arrays),
        "run": _run_fields(trainer),
    }
    store.write(MANIFEST, json.dumps(manifest, indent=2).encode())
    if previous and previous.get("state") not in (None, name):
        store.remove(str(previous["state"]))
    return name


def _read_manifest(store: CheckpointStore) -> dict[str, Any] | None:
    raw = store.read(MANIFEST)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict) or not {"step", "state", "sha256"} <= manifest.keys():
        raise CheckpointError(f"{MANIFEST} lacks the step, state or sha256 of a checkpoint")
    return manifest


def load_checkpoint(store: CheckpointStore, trainer: DreamBoothTrainer) -> int | None:
    """Restore the latest checkpoint into ``trainer``; return its step (None if there is none)."""
    manifest = _read_manifest(store)
    if manifest is None:
        return None
    if manifest.get("run") != _run_fields(trainer):
        raise CheckpointError(
            f"checkpoint was written by a different run ({manifest.get('run')}); "
            f"this run is {_run_fields(trainer)}"
        )
    data = store.read(str(manifest["state"]))
    if data is None or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CheckpointError(f"checkpoint state {manifest['state']} is missing or corrupt")
    variables = _state_variables(trainer)
    with np.load(io.BytesIO(data)) as arrays:
        if len(arrays.files) != len(variables):
            raise CheckpointError(
                f"checkpoint holds {len(arrays.files)} variables, the trainer has {len(variables)}"
            )
        for i, var in enumerate(variables):
            value = arrays[f"v{i:05d}"]
            if tuple(value.shape) != tuple(var.shape):
                raise CheckpointError(f"shape mismatch for {var.path}: {value.shape}")
            var.assign(value)
    return int(manifest["step"])


class CheckpointCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves every ``every`` steps and at the end of ``DreamBoothTrainer.train``."""

    def __init__(
        self, store: CheckpointStore, trainer: DreamBoothTrainer, every: int, start_step: int
    ) -> None:
        super().__init__()
        self.store = store
        self.trainer = trainer
        self.every = max(1, every)
        self.step = start_step
        self.saved_step = start_step

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        if self.step % self.every == 0:
            save_checkpoint(self.store, self.trainer, self.step)
            self.saved_step = self.step

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.saved_step != self.step:
            save_checkpoint(self.store, self.trainer, self.step)
            self.saved_step = self.step
