"""Checkpoints: trained weights, optimizer state and what the run was trained from.

A checkpoint is up to three objects: ``weights-<step>.npz`` (every trained variable, float32),
``optimizer-<step>.npz`` (every optimizer variable: AdamW moments, step counters, loss scale) and
then ``checkpoint.json``, the manifest naming both with their sha256 and recording what the run
was trained from. Objects are streamed to the store variable by variable (one variable in host
memory at a time, hashed on the way) and committed atomically; the manifest is written last and
objects it no longer names are removed only after it, so a crash at any point leaves the previous
checkpoint usable. RNG state needs no saving: every random draw is keyed on ``(seed, step)``.

**Optimizer interval.** LoRA writes its optimizer state (tiny) with every checkpoint. Full
fine-tuning writes it only every ``optimizer_checkpoint_every`` steps (and at a run's first
checkpoint), because it is twice the size of the weights. A resume takes the newest weights and
the newest optimizer state, which may be up to ``optimizer_checkpoint_every -
checkpoint_every`` steps older; its step counters stay as saved, so Adam's bias correction
matches the moments it has. A crash then redoes the steps since the last weights checkpoint
(under ``checkpoint_every``). When both were written at the same step, the resumed run repeats
the uninterrupted one exactly; otherwise its first steps use older moments (the first moment
catches up within ~10 steps, the second within ~1000) and it ends close to, not bit-identical
with, an uninterrupted run.

**Safe resume.** The manifest records the run (method, rank, learning rate, precision, batch,
seed, optimizer settings) and, through :class:`TrainedFrom`, the identifier, class word, base
weights, resolution and a hash of the photos and class images. Resuming with anything different
raises :class:`~trainer.errors.CheckpointMismatch`, naming each difference.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np

from trainer.checkpoints.record import TrainedFrom, differences, images_digest, run_record
from trainer.checkpoints.stores import BlobCheckpointStore, CheckpointStore, DirCheckpointStore
from trainer.dreambooth import DreamBoothTrainer
from trainer.errors import CheckpointError, CheckpointMismatch

__all__ = [
    "MANIFEST",
    "BlobCheckpointStore",
    "CheckpointCallback",
    "CheckpointInfo",
    "CheckpointStore",
    "DirCheckpointStore",
    "TrainedFrom",
    "check_resumable",
    "images_digest",
    "load_checkpoint",
    "read_checkpoint",
    "run_record",
    "save_checkpoint",
]

MANIFEST = "checkpoint.json"
FORMAT = 2
_CHUNK = 1 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same state gives the same bytes


@dataclass(frozen=True)
class CheckpointInfo:
    """The newest checkpoint: its step, objects, and the step its optimizer state is from."""

    step: int
    weights: str
    weights_sha256: str
    optimizer: str
    optimizer_sha256: str
    optimizer_step: int
    trained_from: dict[str, Any]

    def manifest(self) -> dict[str, Any]:
        """The manifest's JSON form (what :func:`read_checkpoint` parses back)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "weights": {"name": self.weights, "sha256": self.weights_sha256},
            "optimizer": {
                "name": self.optimizer,
                "sha256": self.optimizer_sha256,
                "step": self.optimizer_step,
            },
            "trained_from": self.trained_from,
        }


def read_checkpoint(store: CheckpointStore) -> CheckpointInfo | None:
    """The manifest of ``store``'s checkpoint (None if there is none); refuses a broken one."""
    raw = store.read(MANIFEST)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict) or "step" not in manifest:
        raise CheckpointError(f"{MANIFEST} lacks the step of a checkpoint")
    if manifest.get("format") != FORMAT:
        raise CheckpointMismatch(
            ["it was written by an older dreambot that did not record what it was trained from"],
            step=int(manifest["step"]),
        )
    try:
        weights, optimizer = manifest["weights"], manifest["optimizer"]
        return CheckpointInfo(
            step=int(manifest["step"]),
            weights=str(weights["name"]),
            weights_sha256=str(weights["sha256"]),
            optimizer=str(optimizer["name"]),
            optimizer_sha256=str(optimizer["sha256"]),
            optimizer_step=int(optimizer["step"]),
            trained_from=dict(manifest["trained_from"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{MANIFEST} lacks the weights, optimizer or run record") from exc


def check_resumable(
    store: CheckpointStore, record: Mapping[str, Any], *, steps: int | None = None
) -> CheckpointInfo | None:
    """The checkpoint a run with ``record`` may resume from, or None; raises when it differs.

    Only the keys in ``record`` are compared, so a caller can refuse early with what it knows
    before the expensive part (the CLI, before class images); :func:`load_checkpoint` compares
    everything. ``steps``: the run's length; a checkpoint already past it is refused too.
    """
    info = read_checkpoint(store)
    if info is None:
        return None
    found = differences(info.trained_from, dict(record))
    if steps is not None and info.step > steps:
        found.append(f"steps: it is already at step {info.step}, past the {steps} asked for")
    if found:
        raise CheckpointMismatch(found, step=info.step)
    return info


def _variables(trainer: DreamBoothTrainer, part: str) -> list[keras.Variable]:
    return list(trainer.trained_variables if part == "weights" else trainer.optimizer.variables)


class _HashingWriter:
    """A write-only stream that hashes what passes; with no ``tell`` it makes zipfile stream."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        """The store's block closes (and commits) the underlying stream, not zipfile."""


def _write_object(store: CheckpointStore, name: str, variables: Sequence[keras.Variable]) -> str:
    """Stream ``variables`` as an uncompressed npz, one at a time; returns its sha256."""
    with store.open_write(name) as raw:
        out = _HashingWriter(raw)
        with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED) as archive:
            for i, var in enumerate(variables):
                info = zipfile.ZipInfo(f"v{i:05d}.npy", date_time=_ZIP_TIME)
                with archive.open(info, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(var.numpy()), allow_pickle=False)
        return out.sha.hexdigest()


def save_checkpoint(
    store: CheckpointStore,
    trainer: DreamBoothTrainer,
    step: int,
    *,
    origin: TrainedFrom | None = None,
    with_optimizer: bool | None = None,
) -> CheckpointInfo:
    """Write the trainer's state after ``step`` steps and return the new manifest's summary.

    ``with_optimizer`` None follows the interval policy in the module docstring: always for
    LoRA; for full fine-tuning at multiples of ``optimizer_checkpoint_every``, or when the store
    holds no optimizer state of this run at or before ``step``.
    """
    config = trainer.config
    record = run_record(config, origin)
    try:
        previous = read_checkpoint(store)
    except CheckpointError:  # broken or foreign: replaced below
        previous = None
    if previous is not None and (previous.trained_from != record or previous.optimizer_step > step):
        previous = None
    if with_optimizer is None:
        with_optimizer = (
            config.method == "lora"
            or step % config.optimizer_checkpoint_every == 0
            or previous is None
        )
    weights = f"weights-{step:07d}.npz"
    weights_sha256 = _write_object(store, weights, _variables(trainer, "weights"))
    if with_optimizer or previous is None:
        optimizer, optimizer_step = f"optimizer-{step:07d}.npz", step
        optimizer_sha256 = _write_object(store, optimizer, _variables(trainer, "optimizer"))
    else:
        optimizer, optimizer_step = previous.optimizer, previous.optimizer_step
        optimizer_sha256 = previous.optimizer_sha256
    info = CheckpointInfo(
        step, weights, weights_sha256, optimizer, optimizer_sha256, optimizer_step, record
    )
    with store.open_write(MANIFEST) as fh:
        fh.write(json.dumps(info.manifest(), indent=2).encode())
    for old in store.names():
        if old not in (MANIFEST, weights, optimizer):
            store.remove(old)
    return info


def _verified(path: Path | None, name: str, sha256: str) -> Path:
    """``path`` if its bytes hash to ``sha256`` (read in chunks), else CheckpointError."""
    digest = hashlib.sha256()
    if path is not None:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    if path is None or digest.hexdigest() != sha256:
        raise CheckpointError(f"checkpoint object {name} is missing or corrupt")
    return path


def _restore(path: Path, name: str, variables: Sequence[keras.Variable]) -> None:
    """Assign each stored array (read one at a time from the file) to its variable."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if len(arrays.files) != len(variables):
                raise CheckpointError(
                    f"{name} holds {len(arrays.files)} variables, the trainer has {len(variables)}"
                )
            for i, var in enumerate(variables):
                value = arrays[f"v{i:05d}"]
                if tuple(value.shape) != tuple(var.shape):
                    raise CheckpointError(f"shape mismatch for {var.path}: {value.shape}")
                var.assign(value)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint object {name} cannot be read: {exc}") from exc


def load_checkpoint(
    store: CheckpointStore, trainer: DreamBoothTrainer, origin: TrainedFrom | None = None
) -> int | None:
    """Restore the newest checkpoint into ``trainer``; return its step (None if there is none).

    Refused (:class:`~trainer.errors.CheckpointMismatch`) unless it was written by a run with
    the same record (config and ``origin``). Both objects are verified before any is assigned.
    """
    record = run_record(trainer.config, origin)
    found = read_checkpoint(store)
    if found is None:
        return None
    everything = {key: record.get(key) for key in {*record, *found.trained_from}}
    info = check_resumable(store, everything, steps=trainer.config.steps)
    if info is None:  # removed in between (a --fresh elsewhere): nothing to resume
        return None
    with store.fetch(info.weights) as weights, store.fetch(info.optimizer) as optimizer:
        weights_path = _verified(weights, info.weights, info.weights_sha256)
        optimizer_path = _verified(optimizer, info.optimizer, info.optimizer_sha256)
        _restore(weights_path, info.weights, _variables(trainer, "weights"))
        _restore(optimizer_path, info.optimizer, _variables(trainer, "optimizer"))
    return info.step


class CheckpointCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Saves every ``every`` steps (with the optimizer per the interval policy) and at the end."""

    def __init__(
        self,
        store: CheckpointStore,
        trainer: DreamBoothTrainer,
        every: int,
        start_step: int,
        *,
        origin: TrainedFrom | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.trainer = trainer
        self.origin = origin
        self.every = max(1, every)
        self.optimizer_every = (
            max(1, trainer.config.optimizer_checkpoint_every)
            if trainer.config.method == "full"
            else self.every
        )
        self.step = start_step
        self.saved_step = start_step

    def _save(self) -> None:
        save_checkpoint(self.store, self.trainer, self.step, origin=self.origin)
        self.saved_step = self.step

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        if self.step % self.every == 0 or self.step % self.optimizer_every == 0:
            self._save()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.saved_step != self.step:
            self._save()
