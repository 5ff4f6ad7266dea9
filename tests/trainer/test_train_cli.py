"""`dreambot train`: argument and photo errors, and a real tiny run that imagine then draws from."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dreambot.cli import main


def _write_photos(folder: Path, n: int) -> Path:
    """Distinct, sharp 96 px photos (different stripe widths and colours) of one 'dog'."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(n):
        stripes = ((xx + 3 * yy * (i % 2)) // (4 + 3 * i)) % 2
        colour = np.array([200 - 30 * i, 40 + 25 * i, 90 + 20 * i])
        img = np.where(stripes[..., None] == 1, colour, 255 - colour).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MODEL_PRESET", "tiny")
    monkeypatch.delenv("BLOB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_bad_arguments_exit_non_zero(
    settings_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(settings_env / "out")
    with pytest.raises(SystemExit) as info:
        main(
            [
                "train",
                "--photos",
                ".",
                "--class-name",
                "Big Dog",
                "--identifier",
                "sks",
                "--out",
                out,
            ]
        )
    assert info.value.code == 2
    assert "'Big Dog' is not a valid class word" in capsys.readouterr().err
    missing = str(settings_env / "nope")
    assert (
        main(
            [
                "train",
                "--photos",
                missing,
                "--class-name",
                "dog",
                "--identifier",
                "sks",
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--photos",
                ".",
                "--class-name",
                "dog",
                "--identifier",
                "sks",
                "--steps",
                "0",
                "--out",
                out,
            ]
        )


def test_too_few_photos_are_refused_before_training(
    settings_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _write_photos(settings_env / "photos", 1)
    code = main(
        [
            "train",
            "--photos",
            str(photos),
            "--class-name",
            "dog",
            "--identifier",
            "sks",
            "--out",
            "o",
        ]
    )
    assert code == 1
    assert "photo" in capsys.readouterr().err.lower()
    assert not (settings_env / "o" / "model.json").exists()


@pytest.mark.slow  # about a minute: trains, then draws through the CLI
def test_train_writes_a_model_imagine_can_load(
    settings_env: Path, capsys: pytest.CaptureFixture[str], tiny_preset: Any
) -> None:
    photos = _write_photos(settings_env / "photos", 4)
    (photos / "notes.txt").write_text("not a photo")  # listed as rejected, not trained on
    out = settings_env / "model"
    argv = ["train", "--photos", str(photos), "--class-name", "Dog", "--identifier", "sks"]
    argv += ["--preset", "tiny", "--steps", "3", "--class-images", "2", "--out", str(out)]
    argv += ["--learning-rate", "1e-2", "--no-xla"]
    assert main([*argv, "--checkpoint-every", "2"]) == 0
    captured = capsys.readouterr()
    assert "notes.txt: reject" in captured.err and "can train" in captured.err
    assert "step 3/3" in captured.err and "loss" in captured.err and "ETA" in captured.err
    assert "class images 2/2" in captured.err
    assert "lora model of 'a photo of sks dog' after 3 steps" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["lora.npz", "model.json"]

    from trainer.export import load_model, read_metadata

    meta = read_metadata(out)
    assert (meta.preset, meta.resolution, meta.class_name, meta.steps) == ("tiny", 64, "dog", 3)
    # The folder holds trained weights: the loaded UNet answers differently from the base's.
    loaded = load_model(out, base=tiny_preset)  # the CLI's base is the same seed-0 tiny model
    rng = np.random.default_rng(0)
    time_width = tiny_preset.diffusion_model.inputs[1].shape[-1]
    inputs = [
        rng.standard_normal((1, 8, 8, 4)).astype("float32"),
        rng.standard_normal((1, time_width)).astype("float32"),
        np.asarray(tiny_preset.encode_prompts(["a photo of sks dog"]), "float32"),
    ]
    trained = np.asarray(loaded.diffusion_model(inputs))
    base = np.asarray(tiny_preset.diffusion_model(inputs))
    assert np.abs(trained - base).max() > 1e-4

    pngs = settings_env / "images"
    imagine = ["imagine", "--model", str(out), "--out", str(pngs), "a photo of sks dog"]
    code = main([*imagine, "--n", "1", "--steps", "2", "--seed", "7"])
    assert code == 0, capsys.readouterr().err
    assert (pngs / "imagine-7.png").read_bytes().startswith(b"\x89PNG")


class _Stop(KeyboardInterrupt):
    """Stands for Ctrl-C at a chosen point of `dreambot train` (the CLI then exits 130)."""


def _stop(*args: Any, **kwargs: Any) -> Any:
    raise _Stop


def _train(photos: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--photos", str(photos), "--class-name", "dog", "--identifier", "sks"]
    argv += ["--preset", "tiny", "--steps", "1", "--class-images", "0", "--no-xla"]
    return [*argv, "--checkpoint-every", "1", "--learning-rate", "1e-2", "--out", str(out), *extra]


def test_a_new_learning_rate_is_refused_before_any_model_loads(
    settings_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint of `train ... --learning-rate 1e-2` (its manifest, as that run writes it)."""
    from trainer.checkpoints import MANIFEST, CheckpointInfo, run_record
    from trainer.dreambooth import TrainConfig

    photos = _write_photos(settings_env / "photos", 4)
    out = settings_env / "model"
    config = TrainConfig(steps=1, learning_rate=1e-2, checkpoint_every=1, jit_compile=False)
    record = run_record(config) | {"identifier": "sks", "class_name": "dog", "resolution": 64}
    info = CheckpointInfo(1, "weights-0000001.npz", "", "optimizer-0000001.npz", "", 1, record)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / MANIFEST).write_text(json.dumps(info.manifest()))
    monkeypatch.setattr("trainer.presets.build_preset", _stop)  # where the slow part begins

    assert main(_train(photos, out, "--learning-rate", "2e-2")) == 1
    err = capsys.readouterr().err
    assert f"The checkpoint in {out / 'checkpoints'} (step 1) comes from a different run" in err
    assert "  - learning rate: 0.01 then, 0.02 now\n" in err
    assert "add --fresh (this discards it), or give another --out" in err
    assert main(_train(photos, out, "--learning-rate", "2e-2", "--fresh")) == 130
    assert not (out / "checkpoints").exists()


def test_full_fine_tuning_also_trains_on_what_the_base_draws_for_the_empty_prompt(
    settings_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--method full` makes as many empty-prompt images as class images and trains on both; LoRA
    makes none. Each run stops where training starts to encode."""
    photos = _write_photos(settings_env / "photos", 4)
    encoded: list[tuple[Any, ...]] = []

    def encode(*args: Any) -> Any:
        encoded.append(args)
        raise _Stop

    monkeypatch.setattr("trainer.training.encode_training_data", encode)
    argv = ["train", "--photos", str(photos), "--class-name", "dog", "--identifier", "sks"]
    argv += ["--preset", "tiny", "--steps", "1", "--class-images", "2", "--no-xla"]
    assert main([*argv, "--method", "full", "--out", str(settings_env / "full")]) == 130
    err = capsys.readouterr().err
    assert "class images 2/4" in err and "class images 4/4" in err  # both sets in one count
    classes, empties = encoded[0][3], encoded[0][5]
    assert classes.shape == empties.shape == (2, 64, 64, 3)
    assert not np.array_equal(classes, empties)
    assert main([*argv, "--method", "lora", "--out", str(settings_env / "lora")]) == 130
    np.testing.assert_array_equal(encoded[1][3], classes)  # the same cached class images
    assert encoded[1][5] is None


@pytest.mark.slow  # 1-2 minutes here: one real training step, then runs that stop early
def test_rerunning_into_the_same_out_resumes_only_the_same_run(
    settings_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _write_photos(settings_env / "photos", 4)
    others = _write_photos(settings_env / "others", 4)
    edited = np.array(Image.open(others / "photo0.png"))
    edited[40:60, 40:60] = (0, 255, 0)
    Image.fromarray(edited).save(others / "photo0.png")  # the same set, one photo retouched
    out = settings_env / "model"
    manifest = out / "checkpoints" / "checkpoint.json"

    # A run interrupted after its checkpoint, before exporting.
    with monkeypatch.context() as patch:
        patch.setattr("trainer.training.export_model", _stop)
        assert main(_train(photos, out)) == 130
    written = manifest.read_bytes()
    assert "step 1/1" in capsys.readouterr().err

    assert main(_train(photos, out, "--learning-rate", "2e-2")) == 1
    err = capsys.readouterr().err
    assert "learning rate: 0.01 then, 0.02 now" in err and "add --fresh" in err
    assert main(_train(others, out)) == 1
    # (how many pass the photo check depends on its duplicate rule; any change is refused)
    err = capsys.readouterr().err
    assert re.search(r"subject photos: (different ones now|\d then, \d now)", err), err
    assert manifest.read_bytes() == written  # refusing leaves the checkpoint as it was

    # Not refused: new photos into a new --out, or into a copy of this one with --fresh (which
    # discards the old checkpoint). Both are stopped once they start encoding, after every check.
    shutil.copytree(out, settings_env / "copy")
    with monkeypatch.context() as patch:
        patch.setattr("trainer.training.encode_training_data", _stop)
        assert main(_train(others, settings_env / "other-model")) == 130
        assert main(_train(others, settings_env / "copy", "--fresh")) == 130
    assert not (settings_env / "copy" / "checkpoints").exists()
    assert "different run" not in capsys.readouterr().err

    # The same command again resumes: nothing is trained again, the model is exported.
    assert main(_train(photos, out)) == 0
    captured = capsys.readouterr()
    assert f"found a checkpoint at step 1 in {out / 'checkpoints'}" in captured.err
    assert "step 1/1" not in captured.err
    assert "lora model of 'a photo of sks dog' after 1 steps" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["lora.npz", "model.json"]
