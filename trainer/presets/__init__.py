"""Model presets: the only package that imports KerasCV.

``sd-v1`` is KerasCV's Stable Diffusion v1 (real classes, real weight files from WEIGHTS_DIR or
KerasCV's download). ``tiny`` wires the same KerasCV building blocks at small widths with a small
BPE vocabulary built from our word list, so everything runs offline on a CPU: given a
``bases_dir`` it is a small pretrained base, fitted there on first use (:mod:`.tiny_base`), so
training visibly works; without one it is random init from a seed, enough for pipeline tests.
Both expose the same :class:`Preset` surface, so the trainer, exporter and sampler never ask
which preset they hold.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

from storage.errors import ConfigError
from trainer.presets.base import (
    LATENT_SCALE,
    PRESETS,
    TIMESTEP_DIM,
    TRAIN_TIMESTEPS,
    Preset,
    PresetSpec,
    alphas_cumprod_schedule,
    timestep_embedding,
    tokenize,
)
from trainer.presets.models import (
    build_autoencoder,
    build_diffusion_model,
    build_text_encoder,
    tiny_decoder,
    tiny_image_encoder,
    tiny_text_encoder,
)
from trainer.presets.sd_v1 import SD_V1_FILES, build_sd_v1
from trainer.presets.tiny_base import is_pretrained_tiny, load_named_base, load_tiny_base
from trainer.presets.tokenizer import tiny_bpe_path, write_bpe_vocab

__all__ = [
    "LATENT_SCALE",
    "PRESETS",
    "SD_V1_FILES",
    "TIMESTEP_DIM",
    "TRAIN_TIMESTEPS",
    "Preset",
    "PresetSpec",
    "alphas_cumprod_schedule",
    "build_autoencoder",
    "build_diffusion_model",
    "build_preset",
    "build_text_encoder",
    "is_pretrained_tiny",
    "kerascv_pipeline",
    "timestep_embedding",
    "tokenize",
    "write_bpe_vocab",
]


def _build_tiny(
    spec: PresetSpec,
    *,
    bpe_path: Path | None,
    seed: int,
    dtype_policy: str | None,
    bases_dir: Path | None,
    base_id: str | None,
) -> Preset:
    bpe = bpe_path or tiny_bpe_path()
    # The base first: a saved model's missing base fails here, before any model is built.
    if base_id is not None:
        base = load_named_base(bases_dir, base_id, bpe_path=bpe, seed=seed)
    elif bases_dir is not None:
        base = load_tiny_base(bases_dir, bpe_path=bpe, seed=seed)
    else:
        base = None
    keras.utils.set_random_seed(seed)
    tokenizer = SimpleTokenizer(str(bpe))
    text_encoder = tiny_text_encoder(spec)
    unet = build_diffusion_model(spec, dtype_policy=dtype_policy)
    image_encoder = tiny_image_encoder(spec)
    decoder = tiny_decoder(spec)
    weights_id = f"tiny-seed{seed}-r{spec.resolution}"
    if base is not None:
        for model, weights in zip(
            (text_encoder, unet, image_encoder, decoder), base.models(), strict=True
        ):
            model.set_weights(weights)
        weights_id = base.weights_id(spec.resolution)
    return Preset(
        spec=spec,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        diffusion_model=unet,
        image_encoder=image_encoder,
        decoder=decoder,
        weights_id=weights_id,
    )


def build_preset(
    name: str,
    *,
    resolution: int | None = None,
    weights_dir: Path | str | None = None,
    bpe_path: Path | str | None = None,
    seed: int = 0,
    download: bool = False,
    random_weights: bool = False,
    dtype_policy: str | None = None,
    bases_dir: Path | str | None = None,
    tiny_base_id: str | None = None,
) -> Preset:
    """Build a preset's models.

    ``tiny`` is the pretrained toy base of ``seed`` when ``bases_dir`` is given (``$DATA_DIR/bases``
    in the CLI: loaded from there, or fitted there first, which takes minutes once), and random
    init from ``seed`` without it. ``tiny_base_id`` (a saved model's ``base_weights_id``) asks
    for exactly that pretrained base from ``bases_dir`` instead of this code's own, and raises
    :class:`~trainer.errors.BaseNotFound` at once when it is gone. ``sd-v1`` loads KerasCV's
    files from ``weights_dir``, downloads them when ``download`` is set, or (``random_weights``,
    benches only) keeps random init.
    ``dtype_policy`` (e.g. ``mixed_float16``) applies to the UNet, the only model that trains.
    """
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    spec = PRESETS[name]
    if resolution is not None:
        multiple = 64 if name == "sd-v1" else 8 * 2 ** (len(spec.unet_widths) - 1)
        if resolution <= 0 or resolution % multiple:
            raise ConfigError(
                f"Resolution {resolution} does not fit the {name} preset "
                f"(use a positive multiple of {multiple})."
            )
        spec = replace(spec, resolution=resolution)
    wdir = Path(weights_dir) if weights_dir is not None else None
    bpe = Path(bpe_path) if bpe_path is not None else None
    if name == "tiny":
        bases = Path(bases_dir) if bases_dir is not None else None
        return _build_tiny(
            spec,
            bpe_path=bpe,
            seed=seed,
            dtype_policy=dtype_policy,
            bases_dir=bases,
            base_id=tiny_base_id,
        )
    return build_sd_v1(
        spec,
        weights_dir=wdir,
        bpe_path=bpe,
        download=download,
        random_weights=random_weights,
        dtype_policy=dtype_policy,
    )


def kerascv_pipeline(preset: Preset) -> Any:
    """KerasCV's own ``StableDiffusion`` running this preset's models (a baseline for benches)."""
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion

    sd = StableDiffusion(img_height=128, img_width=128, jit_compile=False)
    sd.img_height = sd.img_width = preset.resolution
    sd._tokenizer = preset.tokenizer
    sd._text_encoder = preset.text_encoder
    sd._diffusion_model = preset.diffusion_model
    sd._decoder = preset.decoder
    sd._image_encoder = preset.image_encoder
    return sd
