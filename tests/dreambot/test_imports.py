"""Import rules, read from the source (every import, even inside a function), and each process's
third-party imports against the extra that installs it.

- ``bot`` never imports ``trainer`` and ``trainer`` never imports ``bot``; both import ``storage``,
  which imports neither; only ``dreambot`` (the composition root) imports both.
- ``pip install -e '.[bot]'`` must cover every third-party import the bot's commands can reach, and
  ``.[worker]`` every one that worker, train and imagine can reach.
- In a fresh interpreter, ``dreambot bot`` loads no TensorFlow and ``dreambot worker`` no discord.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from storage.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dreambot", "bot", "trainer", "storage")
TENSORFLOW = {"tensorflow", "keras", "keras_cv"}

# What each package must never import, directly or lazily.
FORBIDDEN = {
    "bot": {"trainer", "dreambot", *TENSORFLOW},
    "trainer": {"bot", "dreambot", "discord"},
    "storage": {"bot", "trainer", "dreambot", "discord", *TENSORFLOW},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. bot.cli
    target: str  # the imported module, e.g. trainer.cli
    lazy: bool  # inside a function (or a TYPE_CHECKING block): not run at import time
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(path: Path) -> list[Import]:
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and _is_type_checking(child):
                child_lazy = True
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module.split(".")
                    package = package if is_package else package[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join([*package, base] if base else package)
                found.append(Import(module, base, lazy, child.lineno))
                # `from pkg import sub` may import the submodule pkg.sub
                found.extend(
                    Import(module, f"{base}.{a.name}", lazy, child.lineno) for a in child.names
                )
            visit(child, child_lazy)

    visit(ast.parse(path.read_text("utf-8"), str(path)), False)
    return found


def _all_imports() -> list[Import]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [imp for path in files for imp in _imports_of(path)]


IMPORTS = _all_imports()
PROJECT_MODULES = {imp.module for imp in IMPORTS} | {
    _module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_reader_sees_lazy_and_module_level_imports() -> None:
    """A control: the reader must find what we know is there, or the rules below prove nothing."""
    by_module = {(i.module, i.target): i for i in IMPORTS}
    assert not by_module[("dreambot.cli", "bot.cli")].lazy
    assert not by_module[("dreambot.cli", "trainer.cli")].lazy
    assert by_module[("trainer.cli_train", "trainer.presets")].lazy  # inside the train handler
    assert by_module[("bot.cli", "bot.stack")].lazy


def test_bot_and_trainer_never_import_each_other_and_storage_imports_neither() -> None:
    broken = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in IMPORTS
        if _top(i.target) in FORBIDDEN.get(_top(i.module), set())
    ]
    assert not broken, "\n".join(broken)


def test_both_sides_use_storage_and_only_the_root_imports_both() -> None:
    uses = {pkg: {_top(i.target) for i in IMPORTS if _top(i.module) == pkg} for pkg in PACKAGES}
    assert "storage" in uses["bot"] and "storage" in uses["trainer"]
    assert {"bot", "trainer"} <= uses["dreambot"]
    importers_of_both = [p for p, targets in uses.items() if {"bot", "trainer"} <= targets]
    assert importers_of_both == ["dreambot"]


# --- extras -------------------------------------------------------------------------------------


def _closure(start: Iterable[str], *, follow_lazy: bool) -> set[str]:
    """Project modules reachable from ``start`` (a package also loads its ``__init__``)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen or module not in PROJECT_MODULES:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # parent packages
        todo += [i.target for i in IMPORTS if i.module == module and (follow_lazy or not i.lazy)]
    return seen


def _third_party(modules: set[str]) -> dict[str, str]:
    """Top-level third-party names imported by ``modules`` -> one place that imports each."""
    found: dict[str, str] = {}
    for i in IMPORTS:
        top = _top(i.target)
        if i.module in modules and top not in PACKAGES and top not in sys.stdlib_module_names:
            found.setdefault(top, f"{i.module}:{i.line}")
    return found


def _requirements(extra: str | None) -> set[str]:
    """Distributions installed by ``pip install dreambot[extra]``, with all their dependencies."""
    env = {"extra": extra or ""}
    direct = []
    for text in md.requires("dreambot") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            direct.append(req)
    names: set[str] = set()
    todo = [(r.name, r.extras) for r in direct]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in names:
            continue
        names.add(key)
        for text in md.requires(name) or []:
            req = Requirement(text)
            ok = req.marker is None or any(
                req.marker.evaluate({"extra": e}) for e in extras or {""}
            )
            if ok:
                todo.append((req.name, req.extras))
    return names


def _distributions_of(top: str) -> set[str]:
    return {canonicalize_name(d) for d in md.packages_distributions().get(top, [])}


# What each process can run: everything the root loads at start, plus its side's code. The train
# command's photo check is the bot's checker, wired in by the root, so the worker side includes it.
SIDES = {
    "bot": ["bot"] + [m for m in PROJECT_MODULES if _top(m) == "bot"],
    "worker": [m for m in PROJECT_MODULES if _top(m) == "trainer" or m.startswith("bot.photos")],
}


@pytest.mark.parametrize("extra", sorted(SIDES))
def test_each_extra_installs_what_its_commands_import(extra: str) -> None:
    at_start = _closure(["dreambot.cli", "dreambot.__main__"], follow_lazy=False)
    reachable = at_start | _closure(SIDES[extra], follow_lazy=True)
    installed = _requirements(None) | _requirements(extra)
    missing = {
        top: where
        for top, where in _third_party(reachable).items()
        if not _distributions_of(top) & installed
    }
    assert not missing, f"imports the [{extra}] extra does not install: {missing}"


def test_the_extras_check_can_fail() -> None:
    """A control: TensorFlow is not in the bot's extra, discord.py not in the worker's."""
    assert not _distributions_of("tensorflow") & (_requirements(None) | _requirements("bot"))
    assert not _distributions_of("discord") & (_requirements(None) | _requirements("worker"))
    assert "trainer.presets" not in _closure(["dreambot.cli"], follow_lazy=False)


# --- fresh interpreters -------------------------------------------------------------------------

_REPORT = """
import atexit, os, signal, sys, threading
def report():
    tops = sorted({{m.split('.')[0] for m in sys.modules}})
    print('LOADED ' + ' '.join(tops), flush=True)
atexit.register(report)
if {stop_after!r}:
    threading.Timer({stop_after!r}, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
from dreambot.cli import main
sys.exit(main({argv!r}))
"""


def _loaded(
    argv: list[str], env: dict[str, str], tmp_path: Path, stop_after: float = 0
) -> set[str]:
    code = _REPORT.format(argv=argv, stop_after=stop_after)
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DISCORD_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**base, "DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("LOADED ")]
    assert lines, done.stdout + done.stderr
    return set(lines[-1].split()[1:])


def test_dreambot_bot_loads_no_tensorflow(tmp_path: Path) -> None:
    # Discord is unreachable on port 9, so the bot starts, fails to connect and exits.
    env = {
        "DISCORD_TOKEN": "x",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10",
    }
    loaded = _loaded(["bot"], env, tmp_path)
    assert "discord" in loaded  # the bot really ran
    assert not loaded & TENSORFLOW


@pytest.mark.queue
def test_dreambot_worker_loads_no_discord(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    # The tiny preset loads in seconds; the worker then serves until the SIGTERM.
    env = {"REDIS_URL": redis_server.url, "MODEL_PRESET": "tiny"}
    loaded = _loaded(["worker"], env, tmp_path, stop_after=30)
    assert "arq" in loaded  # the worker really ran
    assert "discord" not in loaded
