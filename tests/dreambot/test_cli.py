"""The `dreambot` command: one parser over both sides, migrate, one error path and exit codes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DISCORD_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "dreambot", *args],
        cwd=tmp_path,
        env={**base, "DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


COMMANDS = ["up", "bot", "migrate", "photos", "worker", "train", "imagine"]


@pytest.mark.parametrize("command", [*COMMANDS, "photos check"])
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    done = _run([*command.split(), "--help"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: dreambot {command} ")


def test_top_level_help_lists_each_side_s_commands(tmp_path: Path) -> None:
    done = _run(["--help"], tmp_path)
    assert done.returncode == 0
    # The command table: one row per command, its name first, then its help text.
    listed = re.findall(r"^    (\w+)\s{2,}\S", done.stdout, flags=re.MULTILINE)
    assert listed == COMMANDS


def test_migrate_creates_the_database_at_database_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "state.sqlite3"
    first = _run(["migrate"], tmp_path, DATABASE_PATH=str(target))
    assert first.returncode == 0, first.stderr
    assert "applied migrations 1" in first.stdout
    with sqlite3.connect(target) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "models", "usage_ledger"} <= tables
    second = _run(["migrate"], tmp_path, DATABASE_PATH=str(target))
    assert second.returncode == 0 and "up to date" in second.stdout


def test_bad_setting_is_one_paragraph_and_exit_2(tmp_path: Path) -> None:
    done = _run(["migrate"], tmp_path, QUOTA_TRAIN_PER_MONTH="many")
    assert done.returncode == 2
    assert "QUOTA_TRAIN_PER_MONTH" in done.stderr and "Traceback" not in done.stderr


def test_bot_alone_needs_redis_url(tmp_path: Path) -> None:
    done = _run(["bot"], tmp_path, DISCORD_TOKEN="x")
    assert done.returncode == 2 and "REDIS_URL" in done.stderr


def test_worker_alone_needs_redis_url(tmp_path: Path) -> None:
    done = _run(["worker"], tmp_path)
    assert done.returncode == 2 and "REDIS_URL" in done.stderr and "Traceback" not in done.stderr


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    assert _run(["frobnicate"], tmp_path).returncode == 2


def test_rule_breaking_arguments_are_usage_errors_with_the_shared_message(tmp_path: Path) -> None:
    done = _run(["photos", "check", "--class-name", "Big Dog", str(tmp_path)], tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr
    assert "'Big Dog' is not a valid class word" in done.stderr


def test_errors_name_the_command_and_never_show_a_traceback(tmp_path: Path) -> None:
    done = _run(["photos", "check", str(tmp_path / "nope")], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("no such file or folder")
    assert "dreambot photos check: error:" in done.stderr and "Traceback" not in done.stderr
