"""`dreambot photos check`: table and JSON output, exit codes, --out, hostile files and names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dreambot.cli import main
from tests.bot.photos.images import encode, header_bomb_png, textured_photo

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env from the checkout and no photo settings from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith(("PHOTO", "TRAIN_", "PERSON_")):
            monkeypatch.delenv(name)


def _write_good(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(1, count + 1):
        path = folder / f"photo{seed}.jpg"
        path.write_bytes(encode(textured_photo(seed, (800, 600))))
        paths.append(path)
    return paths


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["photos", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_trainable_set_exits_zero_with_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    _write_good(folder, 3)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(b"")  # hidden files are not part of the set
    code, out, _ = _run(capsys, "--class-name", "mug", str(folder))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "verdict", "file", "reasons"]
    assert "notes.txt" in out and "not_image" in out and "text file" in out
    assert ".hidden" not in out
    assert sum(" ok " in line for line in lines) == 3
    assert lines[-1].startswith("Set: warn") and "can train" in lines[-1]


def test_untrainable_set_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _write_good(tmp_path / "set", 2)
    code, out, _ = _run(capsys, "--class-name", "dog", *map(str, paths))
    assert code == 1
    assert "too_few_photos" in out.splitlines()[-1]


def test_json_is_one_array_in_input_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write_good(tmp_path / "set", 3)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_bomb_png(30000, 30000))
    # Neither sorted nor reverse-sorted by path, so output that reorders cannot pass.
    inputs = [good[2], bomb, good[0], good[1]]
    code, out, err = _run(capsys, "--json", "--class-name", "mug", *map(str, inputs))
    assert code == 0
    rows = json.loads(out)  # the whole of stdout is one JSON document
    assert isinstance(rows, list) and len(rows) == 4
    assert all(set(row) == {"path", "verdict", "reasons", "message"} for row in rows)
    assert [r["path"] for r in rows] == [str(p) for p in inputs]
    assert [r["verdict"] for r in rows] == ["ok", "reject", "ok", "ok"]
    assert [r["reasons"] for r in rows] == [[], ["too_many_pixels"], [], []]
    # Each message belongs to its own row: only the bomb's names the size its header claims.
    assert ["30000 x 30000" in r["message"] for r in rows] == [False, True, False, False]
    assert "Set:" in err  # the set verdict goes to stderr only


def test_out_writes_normalised_photos_with_safe_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    _write_good(folder, 2)
    (folder / "-\x1b[31m evil ..name!.jpg").write_bytes(encode(textured_photo(9, (800, 600))))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    out_dir = tmp_path / "out" / "nested"
    code, out, _ = _run(
        capsys, "--class-name", "mug", "--resolution", "256", "--out", str(out_dir), str(folder)
    )
    assert code == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["001-31m_evil_name.png", "003-photo1.png", "004-photo2.png"]
    for path in out_dir.iterdir():
        with Image.open(path) as image:
            assert image.size == (256, 256) and image.mode == "RGB"
    assert "\x1b" not in out and "\\u001b" in out  # the escape is shown, not obeyed


@pytest.mark.timeout(30)
def test_special_files_are_reported_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    paths = [*map(str, _write_good(tmp_path / "set", 3)), str(fifo), "/dev/zero"]
    code, out, _ = _run(capsys, "--json", "--class-name", "mug", *paths)
    assert code == 0
    rows = json.loads(out)
    assert [r["reasons"] for r in rows[3:]] == [["corrupt"], ["corrupt"]]
    assert "not a regular file" in rows[3]["message"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--resolution", "7", "x.jpg"],
        ["--resolution", "big", "x.jpg"],
        ["--class-name", "two words", "x.jpg"],
        [],
        ["--bogus", "x.jpg"],
    ],
)
def test_usage_errors_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["photos", "check", *argv])
    assert raised.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        main(["photos"])
    assert raised.value.code == 2


def test_missing_path_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, str(tmp_path / "nope.jpg"))
    assert code == 2 and out == ""
    assert "no such file or folder" in err


def test_bad_settings_exit_two(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PHOTOS_MIN", "lots")
    code, _, err = _run(capsys, str(tmp_path))
    assert code == 2
    assert "PHOTOS_MIN" in err and "Traceback" not in err


def test_settings_limits_apply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _write_good(tmp_path / "set", 3)
    monkeypatch.setenv("PHOTOS_MIN", "4")
    monkeypatch.setenv("PHOTOS_MAX", "5")
    code, out, _ = _run(capsys, "--class-name", "mug", *map(str, paths))
    assert code == 1 and "at least 4" in out


def test_hostile_corpus_in_a_real_process_never_prints_a_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    good = encode(textured_photo(1, (800, 600)))
    files = {
        "empty.jpg": b"",
        "index.html.png": b"<html><body>hello</body></html>",
        "doc.jpg": b"%PDF-1.4\n%%EOF",
        "truncated.jpg": good[: len(good) // 2],
        "bomb.png": header_bomb_png(),
        "garbage.webp": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(40),
        "line\nbreak.jpg": good,
        "bidi\u202egpj.exe": b"MZ\x90\x00",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / os.fsdecode(b"latin1-\xe9.jpg")).write_bytes(b"\xff\xd8\xff")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PHOTO", "TRAIN_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for extra in (["--class-name", "mug"], ["--class-name", "mug", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "dreambot", "photos", "check", *extra, str(folder)],
            capture_output=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )
        stdout, stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
        assert done.returncode == 1, stderr
        assert "Traceback" not in stdout + stderr
        assert "\x1b" not in stdout and "\u202e" not in stdout
        rows = (
            [row["verdict"] for row in json.loads(stdout)]
            if "--json" in extra
            else [line.split()[1] for line in stdout.splitlines()[1:] if line[:3].strip().isdigit()]
        )
        assert rows.count("reject") == len(files) and rows.count("ok") == 1
