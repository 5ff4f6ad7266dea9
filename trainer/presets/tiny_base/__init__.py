"""The tiny preset's pretrained base: a toy Stable Diffusion fitted on a CPU in minutes.

Random ``tiny`` models prove the pipeline but decode every latent to noise, so nobody can see
training work on them. This package fits them on the toy world (:mod:`.world`), reproducibly
from a seed: the VAE as an autoencoder (:mod:`.vae`), then the UNet with its text encoder on
the trainer's own denoising objective over captioned pictures (:mod:`.unet`). The result knows
the class words of the tiny vocabulary, so "a photo of dog" draws a dog, and a LoRA at the
CLI's default rate teaches it a subject of one distinct colour.

A base is cached as ``<bases_dir>/tiny-<recipe id>/`` (:mod:`.cache`, written atomically, fitted
by one process at a time under a lock beside ``bases_dir``). The recipe id hashes the recipe's
numbers, the preset's shapes, the vocabulary and the code that fits and runs it, so a change to
any of them fits a new base instead of reusing a stale one. The preset's ``weights_id`` names the
recipe and the sha256 of the fitted weights, so checkpoints, exported models and class-image
caches of one base, or of one fit, are never taken for another's. A saved model loads the base
its id names (:func:`load_named_base`), never a newer one, and fails at once when that base is
gone instead of fitting one that cannot be it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

from storage.errors import ConfigError, DreambotError
from trainer.errors import BaseNotFound
from trainer.presets import base as base_module
from trainer.presets import models
from trainer.presets.base import PRESETS, PresetSpec
from trainer.presets.tiny_base import world
from trainer.presets.tiny_base.cache import (
    MANIFEST_FILE,
    PRETRAINED_PREFIX,
    SHA_DIGITS,
    WEIGHTS_FILE,
    TinyBase,
    Weights,
    bases_lock,
    clean_stale,
    read_base,
    write_base,
)
from trainer.presets.tiny_base.recipe import MODEL_NAMES, TinyBaseRecipe
from trainer.presets.tiny_base.unet import build_corpus, fit_unet
from trainer.presets.tiny_base.vae import fit_vae, posterior_model

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
    "load_named_base",
    "load_tiny_base",
    "named_base",
    "read_base",
    "recipe_id",
    "write_base",
]

log = logging.getLogger(__name__)

TINY = PRESETS["tiny"]  # fitted at its own shapes; every weight is independent of picture size
_NAMED = re.compile(
    re.escape(PRETRAINED_PREFIX)
    + rf"(?P<recipe>[0-9a-f]{{12}})-(?P<sha>[0-9a-f]{{{SHA_DIGITS}}})-r\d+"
)
RETRAIN = "Train the model again with this version (dreambot train, or /train) to use it."


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


def named_base(weights_id: str) -> tuple[str, str] | None:
    """The recipe id and the weights' sha256 prefix a pretrained base's weights id names; None
    for any other id (a random tiny base's, or one named before ids carried the weights)."""
    match = _NAMED.fullmatch(weights_id)
    return None if match is None else (match["recipe"], match["sha"])


def fit_tiny_base(
    spec: PresetSpec, tokenizer: object, recipe: TinyBaseRecipe
) -> tuple[Weights, dict[str, float]]:
    """Fit the four models from ``recipe.seed``: their weights, and figures for the manifest.

    Each look's pictures are drawn once and the posterior model built once: the VAE is fitted
    on them, then the UNet's corpus encodes them with it.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(recipe.seed)
    text_encoder = models.tiny_text_encoder(spec)
    unet = models.tiny_unet(spec)
    encoder = models.tiny_image_encoder(spec)
    decoder = models.tiny_decoder(spec)
    posterior = posterior_model(encoder)

    looks = sorted(set(world.CLASS_WORDS.values()))
    plain = {look: world.draw_class(look, recipe.images_per_look, recipe.seed) for look in looks}
    generic = world.draw_generic(sum(len(p) for p in plain.values()), recipe.seed)
    recon = fit_vae(
        encoder,
        posterior,
        decoder,
        np.concatenate([*plain.values(), generic]),
        recipe,
        spec.latent_scale,
    )
    vae_seconds = time.monotonic() - started

    corpus = build_corpus(spec, tokenizer, posterior, recipe, plain)
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
    child process of :func:`load_tiny_base` runs, under its lock."""
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    recipe = TinyBaseRecipe(seed=seed)
    rid = recipe_id(TINY, recipe, bpe_path.read_bytes())
    folder = bases_dir / f"tiny-{rid}"
    log.info("Fitting the tiny base model into %s (a few minutes on a CPU, once)", folder)
    weights, figures = fit_tiny_base(TINY, SimpleTokenizer(str(bpe_path)), recipe)
    log.info("Tiny base fitted in %.0f s: %s", figures["seconds"], figures)
    write_base(folder, rid, weights, {"recipe": dataclasses.asdict(recipe), "figures": figures})
    return folder


def fit_in_child_process(
    bases_dir: Path, bpe_path: Path, seed: int, *, lock_fd: int | None = None
) -> None:
    """Run :func:`fit_and_write` in a child process: its compiled training steps (about 2 GB of
    memory on a CPU) go away with it instead of staying in the caller for its whole life. The
    child fits on the CPU: a caller on a GPU may already hold the card's memory, and a CPU fit
    gives the same base on every machine. It inherits ``lock_fd``, so the lock stays taken
    while it runs even if the caller dies first."""
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
    pass_fds = () if lock_fd is None else (lock_fd,)
    if subprocess.run(command, env=env, check=False, pass_fds=pass_fds).returncode != 0:
        raise DreambotError(
            f"Fitting the tiny base model into {bases_dir} failed; its log is above."
        )


def load_tiny_base(bases_dir: Path | str, *, bpe_path: Path, seed: int = 0) -> TinyBase:
    """The base this code fits from ``seed``: read from ``bases_dir``, or fitted there first
    (minutes, once, in a child process). One process fits at a time: another that needs the
    base meanwhile waits on the lock, then reads it. ``bpe_path`` is the vocabulary, which
    decides every caption's tokens."""
    bases = Path(bases_dir)
    rid = recipe_id(TINY, TinyBaseRecipe(seed=seed), bpe_path.read_bytes())
    folder = bases / f"tiny-{rid}"
    base = read_base(folder, rid)
    if base is not None:
        return base
    with bases_lock(bases) as lock_fd:
        base = read_base(folder, rid)  # fitted by whoever held the lock before us
        if base is None:
            clean_stale(bases)
            fit_in_child_process(bases, bpe_path, seed, lock_fd=lock_fd)
            base = read_base(folder, rid)
            if base is None:
                raise DreambotError(f"Fitting the tiny base model left no base in {folder}.")
    return base


def load_named_base(
    bases_dir: Path | str | None, weights_id: str, *, bpe_path: Path, seed: int = 0
) -> TinyBase:
    """The base a saved model was trained on (``weights_id`` from its model.json), read from
    ``bases_dir`` as it is. It is fitted only when this code's own recipe is the one named (the
    fit may then be the same); a base of another recipe raises :class:`BaseNotFound` at once,
    since no fit here could be it."""
    named = named_base(weights_id)
    if named is None:
        raise BaseNotFound(
            f"This model was trained on a tiny base of an older version ({weights_id}), which "
            f"did not record which fit of the base it was. {RETRAIN}"
        )
    if bases_dir is None:
        raise ConfigError(f"Loading a model trained on {weights_id} needs the bases folder.")
    rid, sha = named
    bases = Path(bases_dir)
    folder = bases / f"tiny-{rid}"
    base = read_base(folder, rid)
    current = recipe_id(TINY, TinyBaseRecipe(seed=seed), bpe_path.read_bytes())
    if base is None and rid == current:
        base = load_tiny_base(bases, bpe_path=bpe_path, seed=seed)
    if base is None:
        raise BaseNotFound(
            f"This model was trained on the tiny base tiny-{rid} (weights {sha}), which is not "
            f"in {bases}. The code that fits the tiny base has changed since: this version fits "
            f"tiny-{current} instead, and cannot make that base again. {RETRAIN}"
        )
    if base.sha256[:SHA_DIGITS] != sha:
        raise BaseNotFound(
            f"This model was trained on the tiny base tiny-{rid} with weights {sha}, but "
            f"{folder} holds another fit of it (weights {base.sha256[:SHA_DIGITS]}), fitted "
            f"again since or on another machine. {RETRAIN}"
        )
    return base
