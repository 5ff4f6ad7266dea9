"""The tiny preset's pretrained base: a toy Stable Diffusion fitted on a CPU in minutes.

Random ``tiny`` models prove the pipeline but decode every latent to noise, so nobody can see
training work on them. This package fits them on the toy world (:mod:`.world`), reproducibly
from a seed: the VAE as an autoencoder (:mod:`.vae`), then the UNet with its text encoder on
the trainer's own denoising objective over captioned pictures (:mod:`.unet`). The result knows
the class words of the tiny vocabulary, so "a photo of dog" draws a dog, and a LoRA at the
CLI's default rate teaches it a subject of one distinct colour.

A base is cached as ``<bases_dir>/tiny-<recipe id>/`` (:mod:`.cache`, written atomically). The
recipe id hashes the recipe's numbers, the preset's shapes, the vocabulary and the code that
fits and runs it, so a change to any of them fits a new base instead of reusing a stale one;
the preset's ``weights_id`` names it, so checkpoints, exported models and class-image caches
of one base are never taken for another's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from storage.errors import DreambotError
from trainer.presets import base as base_module
from trainer.presets import models
from trainer.presets.base import PRESETS, PresetSpec
from trainer.presets.tiny_base import world
from trainer.presets.tiny_base.cache import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Weights,
    read_base,
    write_base,
)
from trainer.presets.tiny_base.recipe import MODEL_NAMES, TinyBaseRecipe
from trainer.presets.tiny_base.unet import build_corpus, fit_unet
from trainer.presets.tiny_base.vae import fit_vae

__all__ = [
    "MANIFEST_FILE",
    "MODEL_NAMES",
    "PRETRAINED_PREFIX",
    "WEIGHTS_FILE",
    "TinyBase",
    "TinyBaseRecipe",
    "fit_and_write",
    "fit_in_child_process",
    "fit_tiny_base",
    "is_pretrained_tiny",
    "load_tiny_base",
    "read_base",
    "recipe_id",
    "write_base",
]

log = logging.getLogger(__name__)

PRETRAINED_PREFIX = "tiny-base-"
TINY = PRESETS["tiny"]  # fitted at its own shapes; every weight is independent of picture size


def recipe_id(spec: PresetSpec, recipe: TinyBaseRecipe, vocabulary: bytes) -> str:
    """12 hex digits naming a base: recipe, shapes, vocabulary and the code, hashed together."""
    digest = hashlib.sha256()
    fields = {"recipe": dataclasses.asdict(recipe), "spec": dataclasses.asdict(spec)}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    digest.update(hashlib.sha256(vocabulary).digest())
    sources = sorted(Path(__file__).parent.glob("*.py"))
    for path in [*sources, Path(str(models.__file__)), Path(str(base_module.__file__))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def is_pretrained_tiny(weights_id: str) -> bool:
    """Whether a weights id (in model.json, a checkpoint) names a pretrained tiny base."""
    return weights_id.startswith(PRETRAINED_PREFIX)


@dataclass(frozen=True)
class TinyBase:
    """A fitted base: its recipe id and each model's weights in model order."""

    recipe_id: str
    weights: Weights

    def weights_id(self, resolution: int) -> str:
        return f"{PRETRAINED_PREFIX}{self.recipe_id}-r{resolution}"

    def models(self) -> list[list[np.ndarray]]:
        """Weights of the text encoder, UNet, image encoder and decoder, in that order."""
        return [self.weights[name] for name in MODEL_NAMES]


def fit_tiny_base(
    spec: PresetSpec, tokenizer: object, recipe: TinyBaseRecipe
) -> tuple[Weights, dict[str, float]]:
    """Fit the four models from ``recipe.seed``: their weights, and figures for the manifest."""
    started = time.monotonic()
    keras.utils.set_random_seed(recipe.seed)
    text_encoder = models.tiny_text_encoder(spec)
    unet = models.tiny_unet(spec)
    encoder = models.tiny_image_encoder(spec)
    decoder = models.tiny_decoder(spec)

    looks = sorted(set(world.CLASS_WORDS.values()))
    pictures = [world.draw_class(look, recipe.images_per_look, recipe.seed) for look in looks]
    generic = world.draw_generic(sum(len(p) for p in pictures), recipe.seed)
    recon = fit_vae(
        encoder, decoder, np.concatenate([*pictures, generic]), recipe, spec.latent_scale
    )
    vae_seconds = time.monotonic() - started

    posterior = keras.Model(encoder.inputs, encoder.layers[-2].output)
    corpus = build_corpus(spec, tokenizer, posterior, recipe)
    loss = fit_unet(unet, text_encoder, corpus, recipe, spec.latent_scale)
    fitted = (text_encoder, unet, encoder, decoder)
    weights = {
        name: [np.asarray(w) for w in model.get_weights()]
        for name, model in zip(MODEL_NAMES, fitted, strict=True)
    }
    figures = {
        "vae_reconstruction_mse": round(recon, 5),
        "unet_loss": round(loss, 5),
        "vae_seconds": round(vae_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    return weights, figures


def fit_and_write(bases_dir: Path, bpe_path: Path, seed: int = 0) -> Path:
    """Fit the base of ``seed`` and publish it under ``bases_dir``; returns its folder. What the
    child process of :func:`load_tiny_base` runs."""
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    recipe = TinyBaseRecipe(seed=seed)
    rid = recipe_id(TINY, recipe, bpe_path.read_bytes())
    folder = bases_dir / f"tiny-{rid}"
    log.info("Fitting the tiny base model into %s (a few minutes on a CPU, once)", folder)
    weights, figures = fit_tiny_base(TINY, SimpleTokenizer(str(bpe_path)), recipe)
    log.info("Tiny base fitted in %.0f s: %s", figures["seconds"], figures)
    write_base(folder, rid, weights, {"recipe": dataclasses.asdict(recipe), "figures": figures})
    return folder


def fit_in_child_process(bases_dir: Path, bpe_path: Path, seed: int) -> None:
    """Run :func:`fit_and_write` in a child process: its compiled training steps (about 2 GB of
    memory on a CPU) go away with it instead of staying in the caller for its whole life. The
    child fits on the CPU: a caller on a GPU may already hold the card's memory, and a CPU fit
    gives the same base on every machine."""
    root = Path(__file__).resolve().parents[3]  # the folder that holds the trainer package
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        sys.executable,
        "-m",
        "trainer.presets.tiny_base",
        str(bases_dir),
        str(bpe_path),
        str(seed),
    ]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise DreambotError(
            f"Fitting the tiny base model into {bases_dir} failed; its log is above."
        )


def load_tiny_base(bases_dir: Path | str, *, bpe_path: Path, seed: int = 0) -> TinyBase:
    """The base of ``seed``: read from ``bases_dir``, or fitted there first (minutes, once, in a
    child process). Two processes may both fit it; the first to finish publishes it and both
    use that one. ``bpe_path`` is the vocabulary, which decides every caption's tokens."""
    bases = Path(bases_dir)
    rid = recipe_id(TINY, TinyBaseRecipe(seed=seed), bpe_path.read_bytes())
    folder = bases / f"tiny-{rid}"
    weights = read_base(folder, rid)
    if weights is None:
        fit_in_child_process(bases, bpe_path, seed)
        weights = read_base(folder, rid)
        if weights is None:
            raise DreambotError(f"Fitting the tiny base model left no base in {folder}.")
    return TinyBase(rid, weights)
