"""The pretrained tiny base: named by its recipe and its fit, written whole or not at all,
fitted by one process at a time, loaded for the models trained on it (or refused at once when
it is gone), and it has learned the toy world (its VAE keeps colours, prompts draw their class).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.conftest import subject_photos

RID = "0123456789ab"


def _weights(seed: int) -> dict[str, list[np.ndarray]]:
    from trainer.presets.tiny_base import MODEL_NAMES

    rng = np.random.default_rng(seed)
    return {
        name: [rng.normal(size=(3, i + 1)).astype(np.float32) for i in range(2)]
        for name in MODEL_NAMES
    }


def _same(a: Any, b: dict[str, list[np.ndarray]]) -> bool:
    """Whether the base ``a`` (read back, or None) holds the weights ``b``."""
    return a is not None and all(
        np.array_equal(x, y) for name in b for x, y in zip(a.weights[name], b[name], strict=True)
    )


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _current_rid() -> str:
    """The recipe id this code fits (seed 0, the tiny vocabulary)."""
    from trainer.presets import PRESETS
    from trainer.presets.tiny_base import TinyBaseRecipe, recipe_id
    from trainer.presets.tokenizer import tiny_bpe_path

    return recipe_id(PRESETS["tiny"], TinyBaseRecipe(), tiny_bpe_path().read_bytes())


def _no_fitting(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.presets.tiny_base as tiny_base

    def refit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a base was fitted")

    monkeypatch.setattr(tiny_base, "fit_in_child_process", refit)


def _stand_in_fit(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.0) -> list[float]:
    """Replace the fit (minutes) by writing small weights as this code's base after
    ``seconds``; returns when each stand-in fit started."""
    import trainer.presets.tiny_base as tiny_base

    started: list[float] = []

    def fit(bases_dir: Path, bpe_path: Path, seed: int, **kwargs: Any) -> None:
        started.append(time.monotonic())
        time.sleep(seconds)
        rid = _current_rid()
        tiny_base.write_base(bases_dir / f"tiny-{rid}", rid, _weights(len(started)), {})

    monkeypatch.setattr(tiny_base, "fit_in_child_process", fit)
    return started


def _model_folder(folder: Path, base_weights_id: str, factors: dict[str, np.ndarray]) -> Path:
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


def _old_base(bases: Path, preset: Any, rid: str) -> Any:
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


def test_the_recipe_id_changes_with_whatever_decides_the_weights() -> None:
    from trainer.presets import PRESETS
    from trainer.presets.tiny_base import TinyBaseRecipe, recipe_id

    spec, recipe = PRESETS["tiny"], TinyBaseRecipe()
    rid = recipe_id(spec, recipe, b"vocabulary")
    assert rid == recipe_id(spec, TinyBaseRecipe(), b"vocabulary") and len(rid) == 12
    others = {
        recipe_id(spec, dataclasses.replace(recipe, seed=1), b"vocabulary"),
        recipe_id(spec, dataclasses.replace(recipe, unet_steps=1999), b"vocabulary"),
        recipe_id(spec, recipe, b"another vocabulary"),
        recipe_id(dataclasses.replace(spec, text_layers=3), recipe, b"vocabulary"),
    }
    assert len(others) == 4 and rid not in others


def test_a_base_reads_back_what_was_written(tmp_path: Path) -> None:
    from trainer.presets.tiny_base import read_base, write_base

    folder = tmp_path / f"tiny-{RID}"
    weights = _weights(0)
    write_base(folder, RID, weights, {"figures": {"seconds": 1.0}})
    assert _same(read_base(folder, RID), weights)
    assert read_base(folder, "another-id") is None  # a base of another recipe is not this one
    assert _leftovers(tmp_path) == []


def test_a_half_written_or_damaged_base_reads_as_missing_and_is_replaced(tmp_path: Path) -> None:
    from trainer.presets.tiny_base import MANIFEST_FILE, WEIGHTS_FILE, read_base, write_base

    folder = tmp_path / f"tiny-{RID}"
    folder.mkdir()  # a crash before the manifest was written
    (folder / WEIGHTS_FILE).write_bytes(b"half a file")
    assert read_base(folder, RID) is None
    write_base(folder, RID, _weights(0), {})
    assert _same(read_base(folder, RID), _weights(0))

    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the sha256 in the manifest no longer fits
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    assert read_base(folder, RID) is None
    write_base(folder, RID, _weights(1), {})
    assert _same(read_base(folder, RID), _weights(1))

    (folder / MANIFEST_FILE).unlink()
    assert read_base(folder, RID) is None
    assert _leftovers(tmp_path) == []


def test_of_two_writers_the_first_base_stays(tmp_path: Path) -> None:
    """Two processes fitting the same base at once: the second finds the first's in place."""
    from trainer.presets.tiny_base import read_base, write_base

    folder = tmp_path / f"tiny-{RID}"
    write_base(folder, RID, _weights(0), {})
    write_base(folder, RID, _weights(1), {})
    assert _same(read_base(folder, RID), _weights(0))
    assert _leftovers(tmp_path) == []


def test_the_toy_world_speaks_the_tiny_vocabulary() -> None:
    """Every class and colour word is one token of the tiny vocabulary, and the class words the
    README and the tests use are drawn."""
    from trainer.presets.tiny_base import world

    vocabulary = set(
        resources.files("trainer.assets").joinpath("tiny_words.txt").read_text().split()
    )
    assert {"dog", "cat", "person", "mug"} <= set(world.CLASS_WORDS)
    assert set(world.CLASS_WORDS) | set(world.COLOUR_WORDS) <= vocabulary
    dogs = world.draw_class("dog", 3, seed=0)
    assert dogs.shape == (3, 64, 64, 3) and dogs.dtype == np.uint8
    assert np.array_equal(dogs, world.draw_class("dog", 3, seed=0))
    red = world.draw_class("dog", 8, seed=0, colour="red").astype(float)
    blue = world.draw_class("dog", 8, seed=0, colour="blue").astype(float)
    assert (red[..., 0] - red[..., 2]).mean() > (blue[..., 0] - blue[..., 2]).mean() + 10


def test_only_pretrained_ids_name_a_pretrained_base() -> None:
    from trainer.presets import is_pretrained_tiny
    from trainer.presets.tiny_base import named_base

    assert is_pretrained_tiny(f"tiny-base-{RID}-cdef01234567-r64")
    assert named_base(f"tiny-base-{RID}-cdef01234567-r64") == (RID, "cdef01234567")
    assert not is_pretrained_tiny("tiny-seed0-r64") and named_base("tiny-seed0-r64") is None
    # An id from before ids carried the weights' sha256 names no fit.
    assert is_pretrained_tiny(f"tiny-base-{RID}-r64") and named_base(f"tiny-base-{RID}-r64") is None


def test_the_weights_id_names_the_fit_not_only_the_recipe(tmp_path: Path) -> None:
    """Two fits of one recipe (fitted again, or on another machine) never share an id."""
    from trainer.presets.tiny_base import MANIFEST_FILE, named_base, read_base, write_base

    first, second = tmp_path / "a" / f"tiny-{RID}", tmp_path / "b" / f"tiny-{RID}"
    write_base(first, RID, _weights(0), {})
    write_base(second, RID, _weights(1), {})
    a, b = read_base(first, RID), read_base(second, RID)
    assert a is not None and b is not None and a.recipe_id == b.recipe_id == RID
    assert a.weights_id(64) != b.weights_id(64)
    sha = json.loads((first / MANIFEST_FILE).read_text())["sha256"]
    assert a.weights_id(64) == f"tiny-base-{RID}-{sha[:12]}-r64"
    assert named_base(a.weights_id(128)) == (RID, sha[:12])


def test_two_processes_needing_the_base_fit_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second waits for the first's fit, then reads its base."""
    from trainer.presets.tiny_base import load_tiny_base
    from trainer.presets.tokenizer import tiny_bpe_path

    fits = _stand_in_fit(monkeypatch, seconds=0.5)
    bases, bpe = tmp_path / "bases", tiny_bpe_path()
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(load_tiny_base(bases, bpe_path=bpe)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(fits) == 1, "both fitted the base"
    assert len(got) == 2 and got[0].sha256 == got[1].sha256
    assert (tmp_path / "bases.lock").exists() and _leftovers(bases) == []


_LIVE_WRITER = """
import fcntl, os, sys, time
lock, staged, tmp, final = sys.argv[1:]
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.rename(staged, tmp)  # a fit in progress: its temporary folder
print("locked", flush=True)
time.sleep(1.5)
os.rename(tmp, final)  # published; the lock goes when this process ends
"""


def test_a_loader_waits_for_another_process_fitting_and_leaves_its_folder_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.presets.tiny_base import load_tiny_base, write_base
    from trainer.presets.tiny_base.cache import lock_path
    from trainer.presets.tokenizer import tiny_bpe_path

    _no_fitting(monkeypatch)
    rid, bases = _current_rid(), tmp_path / "bases"
    bases.mkdir()
    staged = tmp_path / "staged"
    write_base(staged, rid, _weights(5), {})
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LIVE_WRITER,
            str(lock_path(bases)),
            str(staged),
            str(bases / f".tiny-{rid}.live.tmp"),
            str(bases / f"tiny-{rid}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        started = time.monotonic()
        base = load_tiny_base(bases, bpe_path=tiny_bpe_path())
        waited = time.monotonic() - started
    finally:
        writer.wait(30)
    assert writer.returncode == 0, "the live writer's temporary folder was taken from it"
    assert _same(base, _weights(5)) and waited > 0.5
    assert _leftovers(bases) == []


def test_a_fit_killed_half_way_leaves_nothing_behind_the_next_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.presets.tiny_base import load_tiny_base
    from trainer.presets.tokenizer import tiny_bpe_path

    fits = _stand_in_fit(monkeypatch)
    bases = tmp_path / "bases"
    for name in (f".tiny-{RID}.k1ll3d.tmp", f".tiny-{RID}.gone.old"):
        (bases / name).mkdir(parents=True)
        (bases / name / "base.npz").write_bytes(b"half a file")
    base = load_tiny_base(bases, bpe_path=tiny_bpe_path())
    assert len(fits) == 1 and _same(base, _weights(1))
    assert _leftovers(bases) == []


def test_a_model_whose_base_is_gone_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a code change (a new recipe id), a model of the old base is refused with a plain
    message before anything is fitted or built."""
    from trainer.errors import BaseNotFound
    from trainer.export import load_model
    from trainer.presets.tiny_base import write_base

    _no_fitting(monkeypatch)
    bases = tmp_path / "bases"
    model = _model_folder(tmp_path / "model", f"tiny-base-{RID}-cdef01234567-r64", {})
    with pytest.raises(BaseNotFound) as gone:
        load_model(model, bases_dir=bases)
    message = str(gone.value)
    assert f"tiny-{RID}" in message and str(bases) in message
    assert "changed" in message and f"tiny-{_current_rid()}" in message
    assert "Train the model again" in message and gone.value.code == "base_not_found"

    write_base(bases / f"tiny-{RID}", RID, _weights(0), {})  # that recipe, fitted once more
    with pytest.raises(BaseNotFound, match="another fit"):
        load_model(model, bases_dir=bases)

    old = _model_folder(tmp_path / "old", f"tiny-base-{RID}-r64", {})
    with pytest.raises(BaseNotFound, match="older version"):
        load_model(old, bases_dir=bases)


def test_a_model_of_an_older_base_loads_that_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_preset: Any
) -> None:
    """A model of an older tiny base that is still in bases_dir loads it, not this code's: in
    ``dreambot imagine`` (load_model), and in a worker, from a copy of its own that leaves the
    worker's base as it was; and the worker refuses a model whose base is gone."""
    from storage.blobs import BlobStore, keys
    from trainer.errors import BaseNotFound
    from trainer.export import load_model
    from trainer.sampler import Sampler
    from trainer.worker.cache import ModelCache

    _no_fitting(monkeypatch)
    bases = tmp_path / "bases"
    old = _old_base(bases, tiny_preset, RID)
    loaded = load_model(_model_folder(tmp_path / "model", old.weights_id(64), {}), bases_dir=bases)
    assert loaded.weights_id == old.weights_id(64)
    for got, want in zip(
        loaded.diffusion_model.get_weights(), old.weights["diffusion_model"], strict=True
    ):
        np.testing.assert_array_equal(got, want)

    store = BlobStore((tmp_path / "blobs").as_uri())
    for model_id, base_id in [
        ("kept", old.weights_id(64)),
        ("gone", f"tiny-base-{'f' * 12}-{'e' * 12}-r64"),
    ]:
        folder = _model_folder(tmp_path / model_id, base_id, {})
        for path in folder.iterdir():
            store.put(keys.model(model_id, path.name), path.read_bytes())
    options = {"jit_compile": False}
    own = Sampler.from_components(tiny_preset, **options)
    cache = ModelCache(tiny_preset, own, store, 2, sampler_options=options, bases_dir=bases)
    before = [np.array(w) for w in tiny_preset.decoder.get_weights()]

    sampler = cache.sampler_for("kept")
    assert sampler is not own and cache.active is None
    for got, want in zip(sampler.decoder.get_weights(), old.weights["decoder"], strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(tiny_preset.decoder.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(BaseNotFound, match=f"tiny-{'f' * 12}"):
        cache.sampler_for("gone")


@pytest.mark.slow
def test_the_base_is_fitted_once_then_loaded(
    tiny_bases_dir: Path, pretrained_tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.presets.tiny_base as tiny_base
    from trainer.presets import build_preset

    (folder,) = list(tiny_bases_dir.iterdir())  # one base, no temporary folder left behind
    rid = folder.name.removeprefix("tiny-")
    sha = json.loads((folder / "base.json").read_text())["sha256"][:12]
    assert pretrained_tiny.weights_id == f"tiny-base-{rid}-{sha}-r64"

    def refit(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached base was fitted again")

    monkeypatch.setattr(tiny_base, "fit_in_child_process", refit)
    again = build_preset("tiny", bases_dir=tiny_bases_dir, resolution=128)
    assert again.weights_id == f"tiny-base-{rid}-{sha}-r128"
    for got, want in zip(
        again.diffusion_model.get_weights(),
        pretrained_tiny.diffusion_model.get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    # Without a bases folder the tiny preset is still the random one the pipeline tests use.
    assert build_preset("tiny", seed=0).weights_id == "tiny-seed0-r64"


@pytest.mark.slow
def test_the_vae_keeps_colours(pretrained_tiny: Any) -> None:
    """Reconstructions of every look, of a subject of another colour and of random pictures."""
    from trainer.presets.tiny_base import world

    base = pretrained_tiny
    looks = sorted(set(world.CLASS_WORDS.values()))
    for name, pictures, limit in [
        ("looks", np.concatenate([world.draw_class(w, 4, seed=99) for w in looks]), 0.006),
        ("subject", subject_photos(4, seed=99), 0.006),
        ("generic", world.draw_generic(16, seed=99), 0.03),
    ]:
        x = pictures.astype(np.float32) / 127.5 - 1.0
        recon = np.clip(np.asarray(base.decoder(base.image_encoder(x))), -1.0, 1.0)
        error = float(np.mean(np.square((recon - x) / 2.0)))
        print(f"VAE reconstruction error, {name}: {error:.4f}")
        assert error < limit, (name, error)


@pytest.mark.slow
def test_prompts_draw_their_class_and_colour(pretrained_tiny: Any) -> None:
    """Each class prompt draws pictures nearer its own class than any other (mean colour per 16 px
    cell), and a colour word paints the object."""
    from storage.rules import DEFAULT_GUIDANCE, DEFAULT_SAMPLER_STEPS, class_prompt
    from trainer.presets.tiny_base import world
    from trainer.sampler import Sampler

    sampler = Sampler.from_components(pretrained_tiny)

    def draw(prompt: str) -> np.ndarray:
        return sampler.generate(
            prompt, seeds=[0, 1, 2, 3], steps=DEFAULT_SAMPLER_STEPS, guidance=DEFAULT_GUIDANCE
        )

    def cells(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), 4, 16, 4, 16, 3).mean(axis=(2, 4)) / 255.0

    looks = sorted(set(world.CLASS_WORDS.values()))
    references = {look: cells(world.draw_class(look, 32, seed=7)) for look in looks}
    for word in ("dog", "cat", "person", "man", "woman", "mug", "car", "bird", "house"):
        drawn = cells(draw(class_prompt(word)))
        distance = {
            look: float(np.mean(np.square(drawn[:, None] - refs[None])))
            for look, refs in references.items()
        }
        print(word, {k: round(v, 4) for k, v in distance.items()})
        assert min(distance, key=distance.__getitem__) == world.CLASS_WORDS[word], (word, distance)
    red, blue = (
        draw(class_prompt("red car")).astype(float),
        draw(class_prompt("blue car")).astype(float),
    )
    assert (red[..., 0] - red[..., 2]).mean() > (blue[..., 0] - blue[..., 2]).mean() + 20
