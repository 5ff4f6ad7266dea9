"""The pretrained tiny base: named by its recipe, written whole or not at all, and it has
learned the toy world (its VAE keeps colours, prompts draw their class).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.conftest import subject_photos
from tests.trainer.tiny_base_support import (
    RID,
    leftovers,
    same,
    stand_in_weights,
)


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
    weights = stand_in_weights(0)
    write_base(folder, RID, weights, {"figures": {"seconds": 1.0}})
    assert same(read_base(folder, RID), weights)
    assert read_base(folder, "another-id") is None  # a base of another recipe is not this one
    assert leftovers(tmp_path) == []


def test_a_half_written_or_damaged_base_reads_as_missing_and_is_replaced(tmp_path: Path) -> None:
    from trainer.presets.tiny_base import MANIFEST_FILE, WEIGHTS_FILE, read_base, write_base

    folder = tmp_path / f"tiny-{RID}"
    folder.mkdir()  # a crash before the manifest was written
    (folder / WEIGHTS_FILE).write_bytes(b"half a file")
    assert read_base(folder, RID) is None
    write_base(folder, RID, stand_in_weights(0), {})
    assert same(read_base(folder, RID), stand_in_weights(0))

    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the sha256 in the manifest no longer fits
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    assert read_base(folder, RID) is None
    write_base(folder, RID, stand_in_weights(1), {})
    assert same(read_base(folder, RID), stand_in_weights(1))

    (folder / MANIFEST_FILE).unlink()
    assert read_base(folder, RID) is None
    assert leftovers(tmp_path) == []


def test_of_two_writers_the_first_base_stays(tmp_path: Path) -> None:
    """Two processes fitting the same base at once: the second finds the first's in place."""
    from trainer.presets.tiny_base import read_base, write_base

    folder = tmp_path / f"tiny-{RID}"
    write_base(folder, RID, stand_in_weights(0), {})
    write_base(folder, RID, stand_in_weights(1), {})
    assert same(read_base(folder, RID), stand_in_weights(0))
    assert leftovers(tmp_path) == []


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
