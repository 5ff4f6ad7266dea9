"""Class-image cache on the tiny preset: shared across users, topped up deterministically."""

from __future__ import annotations

import dataclasses
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from storage.blobs import BlobStore, keys
from storage.errors import ConfigError, UserFacingError
from trainer.class_images import ClassImageSpec, ensure_class_images, ensure_prior_images
from trainer.sampler import Sampler

STEPS = 2


@pytest.fixture(scope="module")
def sampler(tiny_preset: Any) -> Sampler:
    return Sampler.from_components(tiny_preset)


@pytest.fixture
def spec(tiny_preset: Any) -> ClassImageSpec:
    return ClassImageSpec.for_preset(tiny_preset, "a photo of a dog", seed=7, steps=STEPS)


def _memory_store() -> BlobStore:
    return BlobStore(f"memory://class-images-{uuid.uuid4().hex}")


class RefusingSampler:
    """Stands in for a sampler that must not be asked for anything."""

    def __init__(self, real: Sampler) -> None:
        self.resolution = real.resolution

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache should have been used")


def test_cache_id_covers_every_setting_and_ignores_spacing(spec: ClassImageSpec) -> None:
    changes: dict[str, Any] = {
        "preset": "sd-v1",
        "weights_id": "other-weights",
        "class_prompt": "a photo of a cat",
        "resolution": 128,
        "seed": 8,
        "steps": STEPS + 1,
        "guidance": 3.0,
        "negative_prompt": "blurry",
        "precision": "mixed_float16",
        "sampler_version": spec.sampler_version + 1,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(spec)}  # every field counts
    ids = {dataclasses.replace(spec, **{name: value}).cache_id for name, value in changes.items()}
    assert len(ids) == len(changes)
    assert spec.cache_id not in ids
    same = dataclasses.replace(spec, class_prompt="  A photo   of a DOG ")
    assert same.cache_id == spec.cache_id
    assert spec.image_seed(0) != spec.image_seed(1)
    assert spec.precision == "float32"  # read from the preset's UNet


def test_cache_key_reads_the_unets_precision(tiny_preset: Any) -> None:
    from trainer.dreambooth import copy_diffusion_model

    half = dataclasses.replace(
        tiny_preset, diffusion_model=copy_diffusion_model(tiny_preset, "mixed_bfloat16")
    )
    spec = ClassImageSpec.for_preset(half, "a photo of a dog")
    assert spec.precision == "mixed_bfloat16"
    assert spec.cache_id != ClassImageSpec.for_preset(tiny_preset, "a photo of a dog").cache_id


def test_images_are_generated_once_and_reused(sampler: Sampler, spec: ClassImageSpec) -> None:
    store = _memory_store()
    first = ensure_class_images(sampler, store, spec, 2)
    assert first.generated == 2
    assert first.keys == (keys.class_image(spec.cache_id, 0), keys.class_image(spec.cache_id, 1))
    assert store.list(keys.class_images_prefix(spec.cache_id)) == list(first.keys)
    pngs = first.load(store)
    pixels = [np.asarray(Image.open(io.BytesIO(png))) for png in pngs]
    assert all(p.shape == (64, 64, 3) for p in pixels)
    assert np.abs(pixels[0].astype(int) - pixels[1]).mean() > 5

    again = ensure_class_images(RefusingSampler(sampler), store, spec, 2)  # type: ignore[arg-type]
    assert again.generated == 0
    assert again.load(store) == pngs
    fewer = ensure_class_images(RefusingSampler(sampler), store, spec, 1)  # type: ignore[arg-type]
    assert fewer.keys == first.keys[:1]


def test_topping_up_equals_generating_all_at_once(
    sampler: Sampler, spec: ClassImageSpec, tmp_path: Path
) -> None:
    grown = _memory_store()
    assert ensure_class_images(sampler, grown, spec, 2).generated == 2
    topped = ensure_class_images(sampler, grown, spec, 6)
    assert topped.generated == 4

    at_once = BlobStore(f"file://{tmp_path / 'blobs'}")
    whole = ensure_class_images(sampler, at_once, spec, 6)
    assert whole.generated == 6
    assert whole.keys == topped.keys
    assert topped.load(grown) == whole.load(at_once)
    assert len(set(whole.load(at_once))) == 6


def test_sampler_must_match_the_resolution(sampler: Sampler, spec: ClassImageSpec) -> None:
    with pytest.raises(ConfigError, match="128px"):
        ensure_class_images(sampler, _memory_store(), dataclasses.replace(spec, resolution=128), 1)


def test_count_must_be_sensible(sampler: Sampler, spec: ClassImageSpec) -> None:
    with pytest.raises(UserFacingError) as info:
        ensure_class_images(sampler, _memory_store(), spec, -1)
    assert info.value.code == "bad_class_image_count"
    assert ensure_class_images(sampler, _memory_store(), spec, 0).keys == ()


def test_prior_images_add_the_empty_prompts_own_cache(sampler: Sampler, tiny_preset: Any) -> None:
    """Full fine-tuning's empty-prompt images: a cache of their own per base, counted with the
    class images in one progress, and reused like them."""
    store = _memory_store()
    calls: list[tuple[int, int]] = []
    made, empty = ensure_prior_images(
        sampler,
        store,
        tiny_preset,
        "a photo of a dog",
        2,
        empty_prompt=True,
        progress=lambda written, missing: calls.append((written, missing)),
    )
    assert made.cache_id == ClassImageSpec.for_preset(tiny_preset, "a photo of a dog").cache_id
    assert empty is not None
    assert empty.cache_id == ClassImageSpec.for_preset(tiny_preset, "").cache_id
    assert (made.generated, empty.generated, calls) == (2, 2, [(2, 4), (4, 4)])
    assert made.load(store) != empty.load(store)
    refusing: Any = RefusingSampler(sampler)
    again, again_empty = ensure_prior_images(
        refusing, store, tiny_preset, "a photo of a dog", 2, empty_prompt=True
    )
    assert again == dataclasses.replace(made, generated=0) and again_empty is not None
    assert again_empty.load(store) == empty.load(store)
    assert (
        ensure_prior_images(refusing, store, tiny_preset, "a dog", 0, empty_prompt=False)[1] is None
    )
