"""`dreambot imagine` end to end on an exported tiny model folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dreambot.cli import main
from storage.rules import MAX_SEED
from trainer.sampler import Sampler

PROMPT = "a photo of sks dog"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["imagine", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(["imagine", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "5"], "n must be 1 to 4 (got 5)"),
        (["--n", "0"], "n must be 1 to 4 (got 0)"),
        (["--n", "two"], "n must be a whole number"),
        (["--steps", "0"], "steps must be 1 to 1000"),
        (["--guidance", "-1"], "guidance must be 0 or more"),
        (["--seed", "-3"], "seed must be 0 to"),
    ],
)
def test_bad_arguments_are_usage_errors(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["--model", str(tmp_path), "--out", str(tmp_path), PROMPT, *extra], capsys)
    assert message in err
    assert "usage:" in err


def test_missing_out_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--out" in _usage_error(["--model", str(tmp_path), PROMPT], capsys)


def test_seeds_past_the_range_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = str(MAX_SEED)
    argv = ["--model", str(tmp_path), "--out", str(tmp_path / "o"), PROMPT, "--seed", top]
    code, _, err = _run([*argv, "--n", "2"], capsys)
    assert code == 2
    assert f"seed must be 0 to {MAX_SEED - 1}" in err
    assert not (tmp_path / "o").exists()


def test_missing_model_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    code, out, err = _run(["--model", str(missing), "--out", str(tmp_path / "o"), PROMPT], capsys)
    assert code == 1
    assert f"model folder {missing} does not exist" in err
    assert out == ""


def test_folder_without_a_model_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["--model", str(empty), "--out", str(tmp_path / "o"), PROMPT], capsys)
    assert code == 1
    assert "model.json" in err
    assert "not a dreambot model folder" in err


@pytest.mark.slow  # over 30 s on 2 cores: loads the model and draws twice
def test_same_seed_twice_gives_identical_pngs(
    tiny_model_dir: Path, tiny_preset: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--model", str(tiny_model_dir), PROMPT, "--n", "2", "--steps", "3", "--seed", "42"]
    outputs = []
    for name in ("first", "second"):
        out_dir = tmp_path / name
        code, out, err = _run([*args, "--out", str(out_dir)], capsys)
        assert code == 0, err
        assert out.split() == [str(out_dir / "imagine-42.png"), str(out_dir / "imagine-43.png")]
        assert "step 3/3" in err
        assert "ETA" in err
        outputs.append([(out_dir / f"imagine-{s}.png").read_bytes() for s in (42, 43)])
    assert outputs[0] == outputs[1]
    first, second = (np.asarray(Image.open(io.BytesIO(png))) for png in outputs[0])
    assert first.shape == (64, 64, 3)
    assert np.abs(first.astype(int) - second).mean() > 5
    # The folder's trained weights are used, not just the base model's.
    base = Sampler.from_components(tiny_preset).generate_png(PROMPT, seeds=[42, 43], steps=3)
    assert base != outputs[0]


def test_random_seed_is_reported_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty folder fails at loading, after the seed is chosen: no model run needed.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["--model", str(empty), "--out", str(tmp_path / "o"), PROMPT], capsys)
    assert code == 1
    seed = int(err.split("seed: ")[1].split()[0])
    assert f"pass --seed {seed} to repeat" in err
