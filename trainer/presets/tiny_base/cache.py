"""Fitted bases on disk: one folder per base, written whole or not at all, under one lock.

``<bases_dir>/tiny-<recipe id>/`` holds ``base.npz`` (every model's weights in model order) and
``base.json`` (recipe, figures, and the weights' sha256, written last). A writer fills a private
temporary folder beside it and renames it into place in one step, so a crash mid-write leaves
only a temporary folder that nothing reads. A folder whose files do not match its manifest
reads as missing, and the next write replaces it.

Fitting takes minutes, so processes that share a ``DATA_DIR`` (workers, the CLI) take turns:
whoever fits holds an exclusive lock on ``<bases_dir>.lock`` (:func:`bases_lock`) from checking
the folder to publishing the base, and the others wait, then read its base. A temporary folder
found while holding that lock is a dead writer's, since every writer holds it
(:func:`clean_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.presets.tiny_base.recipe import MODEL_NAMES

__all__ = [
    "MANIFEST_FILE",
    "PRETRAINED_PREFIX",
    "WEIGHTS_FILE",
    "TinyBase",
    "Weights",
    "bases_lock",
    "clean_stale",
    "lock_path",
    "read_base",
    "write_base",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "base.npz"
MANIFEST_FILE = "base.json"
FORMAT = "dreambot-tiny-base"
PRETRAINED_PREFIX = "tiny-base-"
SHA_DIGITS = 12  # of the weights' sha256 in a weights id: 48 bits tell two fits apart

Weights = dict[str, list[np.ndarray]]


@dataclass(frozen=True)
class TinyBase:
    """A fitted base: its recipe id, the sha256 of its weights file, and each model's weights."""

    recipe_id: str
    sha256: str
    weights: Weights

    def weights_id(self, resolution: int) -> str:
        """What checkpoints, exported models and class-image caches record as their base: the
        recipe (which folder) and the weights (which fit), so two fits never share an id."""
        return f"{PRETRAINED_PREFIX}{self.recipe_id}-{self.sha256[:SHA_DIGITS]}-r{resolution}"

    def models(self) -> list[list[np.ndarray]]:
        """Weights of the text encoder, UNet, image encoder and decoder, in that order."""
        return [self.weights[name] for name in MODEL_NAMES]


def read_base(folder: Path, recipe_id: str) -> TinyBase | None:
    """The base in ``folder``, or None when it is absent, another recipe's, or not whole."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
        data = (folder / WEIGHTS_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("recipe_id") != recipe_id:
        return None
    sha256 = hashlib.sha256(data).hexdigest()
    if manifest.get("sha256") != sha256:
        log.warning("%s does not match its manifest; it will be fitted again", folder)
        return None
    counts = manifest.get("counts", {})
    with np.load(io.BytesIO(data)) as arrays:
        weights = {
            name: [arrays[f"{name}.{i:04d}"] for i in range(int(counts.get(name, 0)))]
            for name in MODEL_NAMES
        }
    return TinyBase(recipe_id, sha256, weights)


def write_base(folder: Path, recipe_id: str, weights: Weights, about: dict[str, Any]) -> None:
    """Publish ``weights`` as ``folder`` atomically; ``about`` goes into the manifest. Of two
    writers (which the lock keeps apart) the first rename wins and the second keeps its base."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        buf = io.BytesIO()
        arrays = {f"{name}.{i:04d}": w for name, ws in weights.items() for i, w in enumerate(ws)}
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        data = buf.getvalue()
        (tmp / WEIGHTS_FILE).write_bytes(data)
        manifest = {
            **about,
            "format": FORMAT,
            "recipe_id": recipe_id,
            "counts": {name: len(ws) for name, ws in weights.items()},
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), "utf-8")
        if folder.exists() and read_base(folder, recipe_id) is None:
            _discard(folder)  # broken or foreign: this write replaces it
        try:
            os.rename(tmp, folder)
        except OSError:
            if read_base(folder, recipe_id) is None:  # not another writer's whole base
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Move ``folder`` out of the way in one step, then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, trash / "base")
    shutil.rmtree(trash, ignore_errors=True)


def lock_path(bases_dir: Path) -> Path:
    """The lock file beside ``bases_dir`` (``$DATA_DIR/bases.lock``)."""
    return bases_dir.with_name(f"{bases_dir.name}.lock")


@contextlib.contextmanager
def bases_lock(bases_dir: Path) -> Iterator[int]:
    """Hold the exclusive lock of ``bases_dir``, waiting for whoever holds it (minutes, while a
    base is fitted); yields the lock's file descriptor, which a child that should keep the lock
    for as long as it lives inherits. The kernel lets go when every holder's descriptor closes,
    so a killed holder never leaves it taken."""
    bases_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(bases_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            log.info("Another process is fitting a base into %s; waiting for it", bases_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock (a child holding a copy keeps it until it exits)


def clean_stale(bases_dir: Path) -> list[str]:
    """Delete the temporary folders dead writers left in ``bases_dir`` (a fit killed while
    writing); returns their names. Call it holding :func:`bases_lock`: every writer holds that
    lock, so no live one owns a temporary folder then."""
    removed = []
    for path in sorted(bases_dir.glob(".*")):
        if path.is_dir() and path.suffix in (".tmp", ".old"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("Removed %d unfinished base folders from %s", len(removed), bases_dir)
    return removed
