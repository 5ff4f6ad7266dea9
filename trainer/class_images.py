"""Prior-preservation class images, generated once and shared through the blob store.

Every DreamBooth run for "a photo of a dog" on the same base weights needs the same kind of
class images, so they are cached under an id derived from everything that changes their pixels
(preset, weights id, class prompt, resolution, seed, and the sampler settings) and reused by
every user. When a run needs more images than the cache holds, only the missing ones are made.

Image ``i`` always comes from its own seed and is always generated in the same batch (indices
``4k .. 4k+3`` together), so topping a cache up produces byte-for-byte the files that generating
them all at once would have: float kernels may round differently at other batch sizes, and a
fixed grouping takes that out of the picture. A group with one missing image is regenerated and
only its missing files are written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from storage.blobs import BlobStore, keys
from storage.errors import ConfigError, UserFacingError
from storage.rules import MAX_CLASS_IMAGES, MAX_IMAGES
from trainer.sampler import SAMPLER_VERSION, Sampler, encode_png

__all__ = [
    "GROUP_SIZE",
    "ClassImageSpec",
    "ClassImages",
    "ensure_class_images",
    "ensure_prior_images",
    "normalise_prompt",
]

GROUP_SIZE = MAX_IMAGES
"""Images per sampler call; fixed so the cache never depends on what was already there."""


ProgressFn = Callable[[int, int], None]
"""Called after each generated group with ``(images_written, images_missing)``."""


def normalise_prompt(prompt: str) -> str:
    """The tokenizer lowercases and collapses spaces, so the cache key does too."""
    return " ".join(prompt.split()).lower()


@dataclass(frozen=True)
class ClassImageSpec:
    """Everything that decides the pixels of a class image; its hash is the cache id."""

    preset: str
    weights_id: str
    class_prompt: str
    resolution: int
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    negative_prompt: str = ""
    # The UNet's compute precision changes the pixels (float16 rounds differently).
    precision: str = "float32"
    sampler_version: int = SAMPLER_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_prompt", normalise_prompt(self.class_prompt))
        object.__setattr__(self, "negative_prompt", normalise_prompt(self.negative_prompt))
        object.__setattr__(self, "guidance", float(self.guidance))

    @classmethod
    def for_preset(cls, preset: Any, class_prompt: str, **settings: Any) -> ClassImageSpec:
        """Spec for a built preset (its name, weights id, resolution and UNet precision)."""
        policy = getattr(preset.diffusion_model, "dtype_policy", None)
        settings.setdefault("precision", str(getattr(policy, "name", "float32")))
        return cls(
            preset=str(preset.name),
            weights_id=str(preset.weights_id),
            class_prompt=class_prompt,
            resolution=int(preset.resolution),
            **settings,
        )

    @property
    def cache_id(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def image_seed(self, index: int) -> int:
        """Seed of image ``index``: depends only on the spec and the index."""
        digest = hashlib.sha256(f"{self.cache_id}:{index}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class ClassImages:
    """The first ``len(keys)`` class images of one cache, in index order."""

    cache_id: str
    keys: tuple[str, ...]
    generated: int

    def load(self, store: BlobStore) -> list[bytes]:
        """The PNG files, in index order."""
        return [store.get(key) for key in self.keys]


def _check_sampler(sampler: Sampler, spec: ClassImageSpec) -> None:
    if sampler.resolution != (spec.resolution, spec.resolution):
        height, width = sampler.resolution
        raise ConfigError(
            f"class images at {spec.resolution}px need a sampler at that size "
            f"(this one makes {height}x{width})"
        )


def _missing(store: BlobStore, spec: ClassImageSpec, count: int) -> list[int]:
    """Indices below ``count`` that ``spec``'s cache does not hold yet."""
    present = set(store.list(keys.class_images_prefix(spec.cache_id)))
    return [i for i in range(count) if keys.class_image(spec.cache_id, i) not in present]


def ensure_class_images(
    sampler: Sampler,
    store: BlobStore,
    spec: ClassImageSpec,
    count: int,
    *,
    progress: ProgressFn | None = None,
) -> ClassImages:
    """Make sure images ``0 .. count-1`` of ``spec``'s cache exist; generate only what is missing.

    ``sampler`` must run the base model ``spec`` names (the caller owns that pairing; the
    weights id in the spec is what keeps caches of different weights apart).
    """
    if not 0 <= count <= MAX_CLASS_IMAGES:
        raise UserFacingError(
            f"Ask for 0 to {MAX_CLASS_IMAGES} class images (got {count}).",
            code="bad_class_image_count",
        )
    _check_sampler(sampler, spec)
    cache_id = spec.cache_id
    wanted = [keys.class_image(cache_id, index) for index in range(count)]
    missing = _missing(store, spec, count)
    to_write = set(missing)
    written = 0
    for group in sorted({index // GROUP_SIZE for index in missing}):
        indices = range(group * GROUP_SIZE, (group + 1) * GROUP_SIZE)
        images = sampler.generate(
            spec.class_prompt,
            seeds=[spec.image_seed(index) for index in indices],
            negative_prompt=spec.negative_prompt,
            steps=spec.steps,
            guidance=spec.guidance,
        )
        for index, image in zip(indices, images, strict=True):
            key = keys.class_image(cache_id, index)
            if index in to_write:
                store.put(key, encode_png(image))
                written += 1
        if progress is not None:
            progress(written, len(missing))
    return ClassImages(cache_id=cache_id, keys=tuple(wanted), generated=written)


def ensure_prior_images(
    sampler: Sampler,
    store: BlobStore,
    preset: Any,
    class_prompt: str,
    count: int,
    *,
    empty_prompt: bool,
    progress: ProgressFn | None = None,
) -> tuple[ClassImages, ClassImages | None]:
    """``count`` class images of ``class_prompt`` and, with ``empty_prompt``, as many of the
    empty prompt (what full fine-tuning keeps the unconditional prediction on; one cache per
    base, shared by every class). ``progress`` counts both sets as one."""
    specs = [ClassImageSpec.for_preset(preset, class_prompt)]
    if empty_prompt:
        specs.append(ClassImageSpec.for_preset(preset, ""))
    total = sum(len(_missing(store, spec, min(count, MAX_CLASS_IMAGES))) for spec in specs)
    made: list[ClassImages] = []
    done = 0
    for spec in specs:

        def report(written: int, missing: int, before: int = done) -> None:
            if progress is not None:
                progress(before + written, total)

        made.append(ensure_class_images(sampler, store, spec, count, progress=report))
        done += made[-1].generated
    return made[0], made[1] if empty_prompt else None
