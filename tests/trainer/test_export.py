"""Export and load: a model folder loaded onto a fresh base reproduces the trained outputs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.blobs import BlobStore, keys
from trainer.errors import ModelFormatError
from trainer.export import METADATA_FILE, export_model, load_model, read_metadata, upload_model

# LoRA factors are exported as float16: outputs match to that rounding. Full exports are float32.
LORA_ATOL = 2e-3
FULL_ATOL = 1e-5


def _probe(preset: Any) -> list[Any]:
    import tensorflow as tf

    from trainer.presets import timestep_embedding

    latent = tf.random.stateless_normal((2, 8, 8, 4), seed=(1, 2))
    context = preset.encode_prompts(["a photo of sks dog", "a photo of dog"])
    return [latent, timestep_embedding(tf.constant([10, 600])), context]


def test_lora_export_metadata_and_size(tiny_model_dir: Path, tiny_preset: Any) -> None:
    meta = read_metadata(tiny_model_dir)
    assert (meta.preset, meta.method, meta.rank, meta.identifier, meta.class_name) == (
        "tiny",
        "lora",
        4,
        "sks",
        "dog",
    )
    assert meta.base_weights_id == tiny_preset.weights_id and meta.steps == 6
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["lora.npz", METADATA_FILE]
    with np.load(tiny_model_dir / "lora.npz") as arrays:
        n_params = sum(arrays[k].size for k in arrays.files if not k.endswith("scale"))
        assert all("lora" not in k for k in arrays.files)  # keys are structural, not paths
        overhead = 400 * len(arrays.files)  # zip entry and .npy header per array
    size = (tiny_model_dir / "lora.npz").stat().st_size
    assert size < 2 * n_params + overhead  # float16 factors only, no base weights


def test_loaded_lora_model_reproduces_trained_outputs(
    tiny_model_dir: Path, lora_run: Any, tiny_preset: Any
) -> None:
    inputs = _probe(tiny_preset)
    base_before = [np.array(w) for w in tiny_preset.diffusion_model.get_weights()]
    trained = np.asarray(lora_run.trainer.diffusion_model(inputs))
    base = np.asarray(tiny_preset.diffusion_model(inputs))
    loaded = load_model(tiny_model_dir, base=tiny_preset)
    got = np.asarray(loaded.diffusion_model(inputs))
    assert np.abs(trained - base).max() > 20 * LORA_ATOL  # training moved the outputs
    np.testing.assert_allclose(got, trained, atol=LORA_ATOL)
    assert loaded.tokenizer is tiny_preset.tokenizer and loaded.name == "tiny"
    for w, b in zip(tiny_preset.diffusion_model.get_weights(), base_before, strict=True):
        np.testing.assert_array_equal(w, b)  # the shared base was not modified


def test_full_export_round_trips(full_run: Any, tiny_preset: Any, tmp_path: Path) -> None:
    meta = export_model(
        full_run.trainer,
        tiny_preset,
        tmp_path,
        identifier="sks",
        class_name="dog",
        instance_prompt="a photo of sks dog",
        steps=2,
    )
    assert meta.method == "full" and meta.rank is None and meta.weights_file == "unet.npz"
    inputs = _probe(tiny_preset)
    loaded = load_model(tmp_path, base=tiny_preset)
    want = np.asarray(full_run.trainer.diffusion_model(inputs))
    base = np.asarray(tiny_preset.diffusion_model(inputs))
    assert np.abs(want - base).max() > 100 * FULL_ATOL
    np.testing.assert_allclose(np.asarray(loaded.diffusion_model(inputs)), want, atol=FULL_ATOL)


def test_load_refuses_wrong_base_and_tampering(
    tiny_model_dir: Path, tiny_preset: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    assert load_model(copy, base=tiny_preset).name == "tiny"  # the untouched copy loads
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["base_weights_id"] = "tiny-seed7-r64"
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="trained on"):
        load_model(copy, base=tiny_preset)
    (copy / "lora.npz").write_bytes(b"x" + (copy / "lora.npz").read_bytes()[1:])
    with pytest.raises(ModelFormatError, match="sha256"):
        load_model(copy, base=tiny_preset)
    (copy / METADATA_FILE).write_bytes(b"\xff not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_metadata(copy)
    (copy / METADATA_FILE).write_text("[1, 2]")
    with pytest.raises(ModelFormatError, match="not a version 1"):
        read_metadata(copy)
    (copy / METADATA_FILE).unlink()
    with pytest.raises(ModelFormatError, match="not a dreambot model"):
        read_metadata(copy)


def test_full_weights_that_do_not_fit_the_base_are_refused(
    full_run: Any, tiny_preset: Any, tmp_path: Path
) -> None:
    import hashlib

    export_model(
        full_run.trainer,
        tiny_preset,
        tmp_path,
        identifier="sks",
        class_name="dog",
        instance_prompt="a photo of sks dog",
        steps=2,
    )
    with np.load(tmp_path / "unet.npz") as arrays:
        weights = {k: arrays[k] for k in arrays.files}
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    for broken, why in (
        ({k: v for k, v in weights.items() if k != "w00003"}, "holds"),
        ({**weights, "w00003": np.zeros((2, 2), np.float32)}, "has shape"),
    ):
        buf = io.BytesIO()
        np.savez(buf, **broken)
        (tmp_path / "unet.npz").write_bytes(buf.getvalue())
        meta["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
        with pytest.raises(ModelFormatError, match=why):
            load_model(tmp_path, base=tiny_preset)


def test_upload_to_blob_store(tiny_model_dir: Path) -> None:
    store = BlobStore("memory://dreambot-export-test")
    written = upload_model(tiny_model_dir, store, "model-1")
    assert written[-1] == keys.model("model-1", METADATA_FILE)
    assert (
        store.get(keys.model("model-1", "lora.npz")) == (tiny_model_dir / "lora.npz").read_bytes()
    )


def test_folders_written_before_mode_became_method_still_load(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    raw = json.loads((old / METADATA_FILE).read_text())
    raw["mode"] = raw.pop("method")
    (old / METADATA_FILE).write_text(json.dumps(raw))
    assert read_metadata(old) == read_metadata(tiny_model_dir)
