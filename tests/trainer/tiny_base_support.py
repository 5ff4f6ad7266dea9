"""Helpers shared by the tiny base tests: stand-in weights and fits, model folders."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RID = "0123456789ab"


def stand_in_weights(seed: int) -> dict[str, list[np.ndarray]]:
    from trainer.presets.tiny_base import MODEL_NAMES

    rng = np.random.default_rng(seed)
    return {
        name: [rng.normal(size=(3, i + 1)).astype(np.float32) for i in range(2)]
        for name in MODEL_NAMES
    }


def same(a: Any, b: dict[str, list[np.ndarray]]) -> bool:
    """Whether the base ``a`` (read back, or None) holds the weights ``b``."""
    return a is not None and all(
        np.array_equal(x, y) for name in b for x, y in zip(a.weights[name], b[name], strict=True)
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def current_rid() -> str:
    """The recipe id this code fits (seed 0, the tiny vocabulary)."""
    from trainer.presets import PRESETS
    from trainer.presets.tiny_base import TinyBaseRecipe, recipe_id
    from trainer.presets.tokenizer import tiny_bpe_path

    return recipe_id(PRESETS["tiny"], TinyBaseRecipe(), tiny_bpe_path().read_bytes())


def no_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.presets.tiny_base as tiny_base

    def refit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a base was fitted")

    monkeypatch.setattr(tiny_base, "fit_in_child_process", refit)


def stand_in_fit(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.0) -> list[float]:
    """Replace the fit (minutes) by writing small weights as this code's base after
    ``seconds``; returns when each stand-in fit started."""
    import trainer.presets.tiny_base as tiny_base

    started: list[float] = []

    def fit(bases_dir: Path, bpe_path: Path, seed: int, **kwargs: Any) -> None:
        started.append(time.monotonic())
        time.sleep(seconds)
        rid = current_rid()
        tiny_base.write_base(bases_dir / f"tiny-{rid}", rid, stand_in_weights(len(started)), {})

    monkeypatch.setattr(tiny_base, "fit_in_child_process", fit)
    return started


def model_folder(folder: Path, base_weights_id: str, factors: dict[str, np.ndarray]) -> Path:
    """A LoRA model folder whose model.json names ``base_weights_id`` as its base."""
    from trainer.export import METADATA_FILE, WEIGHT_FILES, ModelMetadata

    buf = io.BytesIO()
    np.savez(buf, **factors)  # type: ignore[arg-type]
    data = buf.getvalue()
    meta = ModelMetadata(
        preset="tiny",
        method="lora",
        rank=4,
        identifier="sks",
        class_name="dog",
        instance_prompt="a photo of sks dog",
        resolution=64,
        steps=1,
        seed=0,
        base_seed=0,
        base_weights_id=base_weights_id,
        weights_file=WEIGHT_FILES["lora"],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / meta.weights_file).write_bytes(data)
    (folder / METADATA_FILE).write_text(json.dumps(dataclasses.asdict(meta)))
    return folder


def old_base(bases: Path, preset: Any, rid: str) -> Any:
    """A base of another (older) recipe in ``bases``: the random tiny preset's weights, moved a
    little so it is not that preset."""
    from trainer.presets.tiny_base import MODEL_NAMES, read_base, write_base

    models = (preset.text_encoder, preset.diffusion_model, preset.image_encoder, preset.decoder)
    weights = {
        name: [np.asarray(w) * np.float32(1.01) for w in model.get_weights()]
        for name, model in zip(MODEL_NAMES, models, strict=True)
    }
    write_base(bases / f"tiny-{rid}", rid, weights, {})
    return read_base(bases / f"tiny-{rid}", rid)
