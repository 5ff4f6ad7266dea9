"""``run_training``, the path every job takes: interrupted past a checkpoint and run again by a
fresh process, it exports the model an uninterrupted run exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.test_checkpoints import RESUME_ATOL
from trainer.checkpoints import MANIFEST, DirCheckpointStore
from trainer.export import read_metadata
from trainer.training import StepReport, TrainJob, run_training

# Two fresh presets and two traced trainers: about a minute here, so only in `make ci`.
pytestmark = pytest.mark.slow


class Interrupted(Exception):
    """Stands for the worker dying (or the job being cancelled) mid-run."""


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def test_interrupted_run_resumes_to_the_uninterrupted_export(
    lora_run: Any,
    tiny_model_dir: Path,
    instance_images: np.ndarray,
    class_images: np.ndarray,
    tmp_path: Path,
) -> None:
    """``lora_run`` / ``tiny_model_dir`` is this same job (tiny seed 0, same photos, prompts and
    config) trained in one go and exported; here it is stopped after step 4 and resumed."""
    from trainer.presets import build_preset

    config = lora_run.trainer.config
    assert (config.steps, config.checkpoint_every) == (6, 3)
    job = TrainJob(identifier="sks", class_name="dog", config=config)
    store = DirCheckpointStore(tmp_path / "checkpoints")

    def stop_after_step_4(report: StepReport) -> None:
        if report.step == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_training(
            build_preset("tiny", seed=0),
            job,
            instance_images,
            class_images,
            tmp_path / "first",
            checkpoints=store,
            progress=stop_after_step_4,
        )
    saved = json.loads((store.path / MANIFEST).read_text())["step"]
    assert 3 <= saved <= 4  # the step-3 checkpoint, or one written as fit stopped
    assert not (tmp_path / "first").exists()

    # A new process: its own preset and trainer, only the checkpoint folder in common.
    reports: list[StepReport] = []
    meta = run_training(
        build_preset("tiny", seed=0),
        job,
        instance_images,
        class_images,
        tmp_path / "resumed",
        checkpoints=store,
        progress=reports.append,
    )
    assert [r.step for r in reports] == list(range(saved + 1, 7))  # resumed, not redone
    assert json.loads((store.path / MANIFEST).read_text())["step"] == 6

    want = read_metadata(tiny_model_dir)
    assert dataclasses.replace(meta, sha256="") == dataclasses.replace(want, sha256="")
    got, expected = _npz(tmp_path / "resumed" / "lora.npz"), _npz(tiny_model_dir / "lora.npz")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_allclose(got[key], value, atol=RESUME_ATOL, rtol=0, err_msg=key)
