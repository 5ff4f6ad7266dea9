"""The bot host runs without TensorFlow: importing any bot module must not pull it in."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import bot

HEAVY = ("tensorflow", "keras", "keras_cv", "trainer")


def _bot_modules() -> list[str]:
    names = ["bot"]
    for info in pkgutil.walk_packages(bot.__path__, prefix="bot."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_bot_module_is_found() -> None:
    modules = _bot_modules()
    assert {"bot.config", "bot.cli", "bot.stack", "bot.client", "bot.errors"} <= set(modules)
    files = {p.stem for p in Path(bot.__file__).parent.rglob("*.py")}
    assert {m.rsplit(".", 1)[-1] for m in modules} >= files - {"__init__", "__main__"}


def test_importing_every_bot_module_imports_no_tensorflow() -> None:
    modules = _bot_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"bot imported {done.stdout.strip()}\n{done.stderr[-2000:]}"
