"""The bot extra in a fresh virtual environment: its commands run, the worker's say what to install.

The import-graph test (``test_imports.py``) shows statically that each extra covers its commands'
imports; this one installs ``.[bot]`` alone, as a bot host would, and runs it. (The worker extra
brings TensorFlow, 1.8 GB, so it is covered by the import-graph test only.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bot_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("bot-venv")
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    # Install from a copy of the tracked files: building in the checkout would leave build/ there,
    # and a stale build/lib could hide a module that no longer exists.
    source = tmp_path_factory.mktemp("source")
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[bot]"],
        check=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return where / "bin" / "dreambot"


def _run(
    dreambot: Path, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DISCORD_TOKEN")}
    return subprocess.run(
        [str(dreambot), *args],
        cwd=tmp_path,
        env={**base, "DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bot_install_has_no_tensorflow_and_runs_the_bot_commands(
    bot_venv: Path, tmp_path: Path
) -> None:
    python = bot_venv.parent / "python"
    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True)
    assert probe.returncode != 0  # a bot host really lacks TensorFlow

    migrated = _run(bot_venv, tmp_path, "migrate")
    assert migrated.returncode == 0 and "applied migrations 1" in migrated.stdout, migrated.stderr

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"not a photo")
    checked = _run(bot_venv, tmp_path, "photos", "check", "--class-name", "mug", str(photos))
    assert checked.returncode == 1 and "not_image" in checked.stdout, checked.stderr

    bot = _run(
        bot_venv,
        tmp_path,
        "bot",
        DISCORD_TOKEN="x",
        REDIS_URL="redis://127.0.0.1:9/0",
        DISCORD_API_BASE="http://127.0.0.1:9/api/v10",
    )
    assert bot.returncode == 1 and "could not reach Redis" in bot.stderr, bot.stderr


@pytest.mark.parametrize("command", ["train", "imagine"])
def test_worker_commands_on_a_bot_install_say_which_extra_to_install(
    bot_venv: Path, tmp_path: Path, command: str
) -> None:
    args = {
        "train": ["--photos", str(tmp_path), "--class-name", "dog", "--identifier", "sks"],
        "imagine": ["a photo of sks dog", "--model", str(tmp_path)],
    }[command]
    done = _run(bot_venv, tmp_path, command, *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "needs tensorflow" in done.stderr and "pip install -e '.[worker]'" in done.stderr
    assert "Traceback" not in done.stderr
