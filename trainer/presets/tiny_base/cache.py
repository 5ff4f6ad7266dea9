"""A fitted base on disk: one folder, written whole or not at all.

``<bases_dir>/tiny-<recipe id>/`` holds ``base.npz`` (every model's weights in model order) and
``base.json`` (recipe, figures, and the weights' sha256, written last). A writer fills a private
temporary folder beside it and renames it into place in one step, so a crash mid-write leaves
only a temporary folder that nothing reads, and of two processes writing at once the first
rename wins and the second keeps the first's base. A folder whose files do not match its
manifest reads as missing, and the next write replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainer.presets.tiny_base.recipe import MODEL_NAMES

__all__ = ["MANIFEST_FILE", "WEIGHTS_FILE", "Weights", "read_base", "write_base"]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "base.npz"
MANIFEST_FILE = "base.json"
FORMAT = "dreambot-tiny-base"

Weights = dict[str, list[np.ndarray]]


def read_base(folder: Path, recipe_id: str) -> Weights | None:
    """The weights in ``folder``, or None when it is absent, another recipe's, or not whole."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
        data = (folder / WEIGHTS_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    if manifest.get("recipe_id") != recipe_id:
        return None
    if manifest.get("sha256") != hashlib.sha256(data).hexdigest():
        log.warning("%s does not match its manifest; it will be fitted again", folder)
        return None
    counts = manifest.get("counts", {})
    with np.load(io.BytesIO(data)) as arrays:
        return {
            name: [arrays[f"{name}.{i:04d}"] for i in range(int(counts.get(name, 0)))]
            for name in MODEL_NAMES
        }


def write_base(folder: Path, recipe_id: str, weights: Weights, about: dict[str, Any]) -> None:
    """Publish ``weights`` as ``folder`` atomically; ``about`` goes into the manifest."""
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
