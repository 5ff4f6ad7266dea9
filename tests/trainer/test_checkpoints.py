"""Checkpoints: resume equals an uninterrupted run; folder and blob-store sinks; streaming,
the full-mode optimizer interval, crashes mid-write, corruption, and refusing another run's."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from storage.blobs import BlobStore, keys
from trainer.checkpoints import (
    MANIFEST,
    BlobCheckpointStore,
    CheckpointCallback,
    DirCheckpointStore,
    TrainedFrom,
    check_resumable,
    load_checkpoint,
    read_checkpoint,
    run_record,
    save_checkpoint,
)
from trainer.errors import CheckpointError, CheckpointMismatch

# float32 on CPU, same ops in the same order: resumed weights match to rounding noise.
RESUME_ATOL = 1e-6


def _scramble(trainer: Any) -> None:
    """Overwrite every piece of state a checkpoint must restore."""
    rng = np.random.default_rng(99)
    for var in [*trainer.trained_variables, *trainer.optimizer.variables]:
        var.assign(rng.normal(size=var.shape).astype(var.dtype) if var.dtype != "int64" else 77)


def _state(trainer: Any) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in trainer.trained_variables]


def _opt_state(trainer: Any) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in trainer.optimizer.variables]


def _full_state(trainer: Any) -> list[np.ndarray]:
    """Trained and optimizer variables: everything a checkpoint holds."""
    return [*_state(trainer), *_opt_state(trainer)]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    for var, value in zip(variables, values, strict=True):
        var.assign(value)


@contextmanager
def _restored(trainer: Any) -> Iterator[None]:
    """Leave a shared session trainer's weights, optimizer and config as the fixture made them."""
    weights, slots, config = _state(trainer), _opt_state(trainer), trainer.config
    try:
        yield
    finally:
        trainer.config = config
        _assign(trainer.trained_variables, weights)
        _assign(trainer.optimizer.variables, slots)


def _origin(images: np.ndarray, **changes: Any) -> TrainedFrom:
    fields: dict[str, Any] = {
        "identifier": "sks",
        "class_name": "dog",
        "weights_id": "tiny-seed0-r64",
        "resolution": 64,
        "instance_images": images,
        "class_images": None,
    }
    return TrainedFrom.of(**(fields | changes))


def test_resume_reaches_the_uninterrupted_result(lora_run: Any, tiny_data: Any) -> None:
    tr = lora_run.trainer
    final = _state(tr)
    manifest = json.loads((lora_run.checkpoint_dir / MANIFEST).read_text())
    assert manifest["step"] == 6  # saved at 3, then at the end; the older objects were removed
    assert sorted(p.name for p in lora_run.checkpoint_dir.iterdir()) == [
        MANIFEST,
        "optimizer-0000006.npz",  # LoRA writes its (tiny) optimizer state every time
        "weights-0000006.npz",
    ]

    # Re-run steps 0..3 only, as an interrupted job would, checkpointing at 3.
    store = DirCheckpointStore(lora_run.checkpoint_dir / "interrupted")
    _assign(tr.diffusion_model.weights, lora_run.before)
    _assign(tr.optimizer.variables, lora_run.before_optimizer)
    tr.train(tiny_data, until_step=3)
    save_checkpoint(store, tr, 3)

    _scramble(tr)
    step = load_checkpoint(store, tr)
    assert step == 3
    tr.train(tiny_data, start_step=step)
    for got, want in zip(_state(tr), final, strict=True):
        np.testing.assert_allclose(got, want, atol=RESUME_ATOL, rtol=0)
    _assign(tr.trained_variables, final)  # leave the shared run exactly as the fixture made it


def test_each_variable_is_stored_once_in_float32(lora_run: Any, tmp_path: Path) -> None:
    tr = lora_run.trainer
    info = save_checkpoint(DirCheckpointStore(tmp_path), tr, 1)
    for name, variables in ((info.weights, tr.trained_variables), (info.optimizer, None)):
        variables = variables or tr.optimizer.variables
        with np.load(tmp_path / name) as arrays:
            assert len(arrays.files) == len(variables)
            for i, var in enumerate(variables):
                stored = arrays[f"v{i:05d}"]
                assert stored.dtype == np.dtype(var.dtype) and stored.shape == tuple(var.shape)
        payload = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
        # npy headers and zip entries only: no second copy of anything.
        assert (tmp_path / name).stat().st_size < payload + 512 * len(variables)
    assert all(np.dtype(v.dtype) == np.float32 for v in tr.trained_variables)


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
        keys.checkpoint("job-1", "optimizer-0000006.npz"),
        keys.checkpoint("job-1", "weights-0000006.npz"),
    ]
    with _restored(tr):
        _scramble(tr)
        assert load_checkpoint(store, tr) == 6
        for g, w in zip(_full_state(tr), want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_memory_blob_store_sink(lora_run: Any) -> None:
    tr = lora_run.trainer
    store = BlobCheckpointStore(BlobStore("memory://dreambot-ckpt-test"), "job-2")
    saved = _full_state(tr)
    save_checkpoint(store, tr, 1)
    with _restored(tr):
        _scramble(tr)
        assert load_checkpoint(store, tr) == 1
        for got, want in zip(_full_state(tr), saved, strict=True):
            np.testing.assert_array_equal(got, want)


def test_full_mode_writes_the_optimizer_at_its_own_interval(full_run: Any, tmp_path: Path) -> None:
    """Weights every 2 steps, optimizer every 4 (and at the first checkpoint); a resume takes the
    newest weights with the newest optimizer state, even when that is older."""
    tr = full_run.trainer
    store = DirCheckpointStore(tmp_path)
    with _restored(tr):
        tr.config = dataclasses.replace(tr.config, steps=8, optimizer_checkpoint_every=4)
        callback = CheckpointCallback(store, tr, every=2, start_step=0)
        seen: dict[int, tuple[int, list[str]]] = {}
        snapshots: dict[int, list[np.ndarray]] = {}
        for step in range(1, 8):
            tr.trained_variables[0].assign(tr.trained_variables[0] + 1.0)  # stand-in for a step
            tr.optimizer.variables[-1].assign(tr.optimizer.variables[-1] + 1.0)
            snapshots[step] = _full_state(tr)
            callback.on_train_batch_end(step - 1)
            info = read_checkpoint(store)
            if info is not None:
                seen[info.step] = (info.optimizer_step, store.names())
        callback.on_train_end()  # step 7: weights only; the optimizer stays at step 4
        info = read_checkpoint(store)
        assert info is not None and (info.step, info.optimizer_step) == (7, 4)
        assert seen == {
            2: (2, [MANIFEST, "optimizer-0000002.npz", "weights-0000002.npz"]),
            4: (4, [MANIFEST, "optimizer-0000004.npz", "weights-0000004.npz"]),
            6: (4, [MANIFEST, "optimizer-0000004.npz", "weights-0000006.npz"]),
        }

        _scramble(tr)
        assert load_checkpoint(store, tr) == 7
        n = len(tr.trained_variables)
        for got, want in zip(_state(tr), snapshots[7][:n], strict=True):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(_opt_state(tr), snapshots[4][n:], strict=True):
            np.testing.assert_array_equal(got, want)  # moments and step counter from step 4


class _Crash(Exception):
    pass


class _CrashingStore(DirCheckpointStore):
    """Dies after a few bytes of the next object written: a worker killed mid-checkpoint."""

    @contextmanager
    def open_write(self, name: str) -> Iterator[IO[bytes]]:
        with super().open_write(name) as fh:
            fh.write(b"PK\x03\x04partial")
            raise _Crash


def test_a_crash_mid_write_leaves_the_previous_checkpoint(lora_run: Any, tmp_path: Path) -> None:
    tr = lora_run.trainer
    saved = _full_state(tr)
    save_checkpoint(DirCheckpointStore(tmp_path), tr, 3)
    before = sorted(p.name for p in tmp_path.iterdir())
    with _restored(tr):
        _scramble(tr)
        with pytest.raises(_Crash):
            save_checkpoint(_CrashingStore(tmp_path), tr, 6)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial object left
        assert load_checkpoint(DirCheckpointStore(tmp_path), tr) == 3
        for got, want in zip(_full_state(tr), saved, strict=True):
            np.testing.assert_array_equal(got, want)


def test_corrupt_checkpoints_are_refused(lora_run: Any, tmp_path: Path) -> None:
    tr = lora_run.trainer
    store = DirCheckpointStore(tmp_path)
    info = save_checkpoint(store, tr, 2)
    manifest = (tmp_path / MANIFEST).read_bytes()

    (tmp_path / info.optimizer).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=f"{info.optimizer} is missing or corrupt"):
        load_checkpoint(store, tr)
    (tmp_path / info.weights).unlink()
    with pytest.raises(CheckpointError, match=f"{info.weights} is missing or corrupt"):
        load_checkpoint(store, tr)

    for broken, why in ((b"\xff{", "not valid JSON"), (b"[]", "lacks"), (b'{"step": 1}', "older")):
        (tmp_path / MANIFEST).write_bytes(broken)
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(store, tr)
    legacy = json.loads(manifest) | {"format": 1}
    (tmp_path / MANIFEST).write_text(json.dumps(legacy))
    with pytest.raises(CheckpointMismatch, match="older dreambot"):
        load_checkpoint(store, tr)


def test_another_runs_checkpoint_is_refused_with_what_differs(
    lora_run: Any, instance_images: np.ndarray, class_images: np.ndarray, tmp_path: Path
) -> None:
    tr = lora_run.trainer
    config = tr.config
    store = DirCheckpointStore(tmp_path)
    origin = _origin(instance_images, class_images=class_images)
    save_checkpoint(store, tr, 4, origin=origin)

    def refused(record: dict[str, Any], steps: int = 6) -> str:
        with pytest.raises(CheckpointMismatch) as info:
            check_resumable(store, record, steps=steps)
        assert info.value.step == 4 and "start fresh" in str(info.value)
        return "\n".join(info.value.differences)

    new_rate = run_record(dataclasses.replace(config, learning_rate=2e-3), origin)
    assert refused(new_rate) == "learning rate: 0.001 then, 0.002 now"
    other_photos = instance_images.copy()
    other_photos[0, 0, 0, 0] ^= 1  # one bit of one pixel
    assert refused(run_record(config, _origin(other_photos, class_images=class_images))) == (
        "subject photos: different ones now (same number, 4)"
    )
    fewer = _origin(instance_images[:3], class_images=None, identifier="zwx", resolution=128)
    assert refused(run_record(dataclasses.replace(config, lora_rank=8), fewer)).split("\n") == [
        "identifier: sks then, zwx now",
        "resolution (px): 64 then, 128 now",
        "subject photos: 4 then, 3 now",
        "class images: 6 then, none now",
        "LoRA rank: 4 then, 8 now",
    ]
    assert refused(run_record(config, origin), steps=3) == (
        "steps: it is already at step 4, past the 3 asked for"
    )
    with pytest.raises(CheckpointMismatch, match="identifier: sks then, none now"):
        load_checkpoint(store, tr)  # a run that does not say what it trains from

    same = check_resumable(store, run_record(config, origin), steps=6)
    assert same is not None and same.step == 4
    with _restored(tr):
        _scramble(tr)
        assert load_checkpoint(store, tr, origin) == 4


def test_a_record_from_before_the_empty_prompt_rate_trained_without_it() -> None:
    """Checkpoints written before the fields existed trained every class row on the class prompt:
    a LoRA run (rate 0) resumes them; a full run, now at 0.25 with empty-prompt images, is told
    exactly that (and can start fresh)."""
    from trainer.checkpoints.record import differences
    from trainer.dreambooth import TrainConfig

    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    facts: dict[str, Any] = {"identifier": "sks", "class_name": "dog", "weights_id": "w"}
    origin = TrainedFrom.of(**facts, resolution=4, instance_images=pixels, class_images=pixels)
    olds: dict[str, dict[str, Any]] = {}
    for method in ("lora", "full"):
        old = run_record(TrainConfig(method=method), origin)  # type: ignore[arg-type]
        del old["empty_prompt_rate"], old["empty_data"]
        olds[method] = old
    assert differences(olds["lora"], run_record(TrainConfig(method="lora"), origin)) == []
    with_empty = TrainedFrom.of(
        **facts, resolution=4, instance_images=pixels, class_images=pixels, empty_images=pixels
    )
    assert differences(olds["full"], run_record(TrainConfig(method="full"), with_empty)) == [
        "empty-prompt images: none then, 2 now",
        "share of class samples on empty-prompt images: 0 then, 0.25 now",
    ]


def test_full_resume_from_older_optimizer_state(
    full_run: Any, tiny_data: Any, tmp_path: Path
) -> None:
    """What the README promises for a crash between optimizer checkpoints: a resume from the
    newest weights with older moments runs on, close to the uninterrupted run but not equal to
    it; with both saved at the same step it repeats the uninterrupted run."""
    tr = full_run.trainer

    def from_the_start() -> None:
        _assign(tr.diffusion_model.weights, full_run.before)
        _assign(tr.optimizer.variables, full_run.before_optimizer)

    with _restored(tr):
        tr.config = dataclasses.replace(tr.config, steps=4, optimizer_checkpoint_every=2)
        from_the_start()
        start = _state(tr)
        tr.train(tiny_data, until_step=4)
        want = _state(tr)
        moved = max(float(np.abs(w - s).max()) for w, s in zip(want, start, strict=True))

        for both_at_3 in (False, True):
            store = DirCheckpointStore(tmp_path / f"both-{both_at_3}")
            from_the_start()
            tr.train(tiny_data, until_step=2)
            save_checkpoint(store, tr, 2)
            tr.train(tiny_data, start_step=2, until_step=3)
            info = save_checkpoint(store, tr, 3, with_optimizer=both_at_3 or None)
            assert info.optimizer_step == (3 if both_at_3 else 2)
            _scramble(tr)
            assert load_checkpoint(store, tr) == 3
            tr.train(tiny_data, start_step=3)
            off = max(float(np.abs(g - w).max()) for g, w in zip(_state(tr), want, strict=True))
            if both_at_3:
                assert off <= RESUME_ATOL
            else:
                assert RESUME_ATOL < off < moved / 2, (off, moved)
