"""Checkpoints: resume equals an uninterrupted run; folder and blob-store sinks; corruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.blobs import BlobStore, keys
from trainer.checkpoints import (
    MANIFEST,
    BlobCheckpointStore,
    DirCheckpointStore,
    load_checkpoint,
    save_checkpoint,
)
from trainer.errors import CheckpointError

# float32 on CPU, same ops in the same order: resumed weights match to rounding noise.
RESUME_ATOL = 1e-6


def _scramble(trainer: Any) -> None:
    """Overwrite every piece of state a checkpoint must restore."""
    rng = np.random.default_rng(99)
    for var in [*trainer.trained_variables, *trainer.optimizer.variables]:
        var.assign(rng.normal(size=var.shape).astype(var.dtype) if var.dtype != "int64" else 77)


def _state(trainer: Any) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in trainer.trained_variables]


def _full_state(trainer: Any) -> list[np.ndarray]:
    """Trained and optimizer variables: everything a checkpoint holds."""
    return [np.array(v.numpy()) for v in [*trainer.trained_variables, *trainer.optimizer.variables]]


def test_resume_reaches_the_uninterrupted_result(lora_run: Any, tiny_data: Any) -> None:
    tr = lora_run.trainer
    final = _state(tr)
    manifest = json.loads((lora_run.checkpoint_dir / MANIFEST).read_text())
    assert manifest["step"] == 6  # saved at 3, then at the end; the older state was removed
    assert sorted(p.name for p in lora_run.checkpoint_dir.iterdir()) == [
        MANIFEST,
        "state-0000006.npz",
    ]

    # Re-run steps 0..3 only, as an interrupted job would, checkpointing at 3.
    store = DirCheckpointStore(lora_run.checkpoint_dir / "interrupted")
    for var, value in zip(tr.diffusion_model.weights, lora_run.before, strict=True):
        var.assign(value)
    for var, value in zip(tr.optimizer.variables, lora_run.before_optimizer, strict=True):
        var.assign(value)
    tr.train(tiny_data, until_step=3)
    save_checkpoint(store, tr, 3)

    _scramble(tr)
    step = load_checkpoint(store, tr)
    assert step == 3
    tr.train(tiny_data, start_step=step)
    for got, want in zip(_state(tr), final, strict=True):
        np.testing.assert_allclose(got, want, atol=RESUME_ATOL, rtol=0)
    for var, value in zip(tr.trained_variables, final, strict=True):
        var.assign(value)  # leave the shared run exactly as the fixture made it


def test_blob_store_sink_round_trips(lora_run: Any, tmp_path: Path) -> None:
    tr = lora_run.trainer
    blobs = BlobStore(tmp_path.as_uri())
    store = BlobCheckpointStore(blobs, "job-1")
    assert load_checkpoint(store, tr) is None
    want = _full_state(tr)
    save_checkpoint(store, tr, 5)
    save_checkpoint(store, tr, 6)
    assert blobs.list(keys.checkpoint_prefix("job-1")) == [
        keys.checkpoint("job-1", MANIFEST),
        keys.checkpoint("job-1", "state-0000006.npz"),
    ]
    _scramble(tr)
    assert load_checkpoint(store, tr) == 6
    for g, w in zip(_full_state(tr), want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_memory_blob_store_sink(lora_run: Any) -> None:
    tr = lora_run.trainer
    store = BlobCheckpointStore(BlobStore("memory://dreambot-ckpt-test"), "job-2")
    saved = _full_state(tr)
    save_checkpoint(store, tr, 1)
    _scramble(tr)
    assert load_checkpoint(store, tr) == 1
    for got, want in zip(_full_state(tr), saved, strict=True):
        np.testing.assert_array_equal(got, want)


def test_corrupt_or_foreign_checkpoints_are_refused(lora_run: Any, tmp_path: Path) -> None:
    tr = lora_run.trainer
    store = DirCheckpointStore(tmp_path)
    name = save_checkpoint(store, tr, 2)
    manifest = json.loads((tmp_path / MANIFEST).read_text())

    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(store, tr)

    manifest["run"]["lora_rank"] = 8
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="different run"):
        load_checkpoint(store, tr)

    for broken, why in ((b"\xff{", "not valid JSON"), (b"[]", "lacks"), (b"{}", "lacks")):
        (tmp_path / MANIFEST).write_bytes(broken)
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(store, tr)
