"""The sd-v1 preset: KerasCV's Stable Diffusion v1 classes with its weight files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import h5py
import keras
from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer
from keras_cv.src.models.stable_diffusion.decoder import Decoder
from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

from storage.errors import ConfigError
from trainer.errors import WeightsNotFound
from trainer.presets.base import Preset, PresetSpec
from trainer.presets.models import build_diffusion_model

__all__ = ["SD_V1_FILES", "build_sd_v1"]

# File names exactly as KerasCV downloads them, so a WEIGHTS_DIR can be filled from its cache.
SD_V1_FILES = {
    "diffusion_model": "kcv_diffusion_model.h5",
    "image_encoder": "vae_encoder.h5",
    "decoder": "kcv_decoder.h5",
    "text_encoder": "kcv_encoder.h5",
    "bpe": "bpe_simple_vocab_16e6.txt.gz",
}


def _file_id(paths: Sequence[Path]) -> str:
    """Cheap identity of big weight files: name, size and the first and last MiB."""
    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def _weight_file(weights_dir: Path, key: str) -> Path:
    path = weights_dir / SD_V1_FILES[key]
    if not path.is_file():
        raise WeightsNotFound(
            f"Missing weight file {SD_V1_FILES[key]} in WEIGHTS_DIR={weights_dir}. Put KerasCV's "
            f"file of that name there (or allow downloading)."
        )
    if not h5py.is_hdf5(path):
        raise _not_kerascv(path, "it is not an HDF5 file (truncated download?)")
    return path


def _not_kerascv(path: Path, why: str) -> WeightsNotFound:
    return WeightsNotFound(
        f"{path.name} in WEIGHTS_DIR={path.parent} is not KerasCV's Stable Diffusion v1 weight "
        f"file: {why}. Download it again, or remove it and allow downloading."
    )


def _load(model: keras.Model, path: Path) -> None:
    """Load one of KerasCV's (Keras 2 era, legacy HDF5) files; a wrong file says which."""
    try:
        model.load_weights(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise _not_kerascv(path, str(exc).splitlines()[0][:200]) from exc


def build_sd_v1(
    spec: PresetSpec,
    *,
    weights_dir: Path | None,
    bpe_path: Path | None,
    download: bool,
    random_weights: bool,
    dtype_policy: str | None,
) -> Preset:
    if weights_dir is None and not (download or random_weights):
        raise ConfigError(
            "The sd-v1 preset needs WEIGHTS_DIR (a folder with KerasCV's weight files: "
            + ", ".join(SD_V1_FILES.values())
            + ") or downloading enabled."
        )
    files: dict[str, Path] = {}
    if weights_dir is not None:
        for key in ("diffusion_model", "image_encoder", "decoder", "text_encoder"):
            files[key] = _weight_file(weights_dir, key)
    if bpe_path is None and weights_dir is not None and (weights_dir / SD_V1_FILES["bpe"]).exists():
        bpe_path = weights_dir / SD_V1_FILES["bpe"]
    if bpe_path is not None and not bpe_path.is_file():
        raise ConfigError(f"BPE_PATH={bpe_path} does not exist.")
    if bpe_path is None and not download:
        raise ConfigError(
            f"The sd-v1 preset needs CLIP's BPE vocabulary: set BPE_PATH or put "
            f"{SD_V1_FILES['bpe']} in WEIGHTS_DIR."
        )
    fetch = download and weights_dir is None and not random_weights
    size = spec.resolution
    tokenizer = SimpleTokenizer(str(bpe_path) if bpe_path else None)
    text_encoder = TextEncoder(spec.max_prompt_length, download_weights=fetch)
    unet = build_diffusion_model(spec, dtype_policy=dtype_policy, download=fetch)
    image_encoder = ImageEncoder(download_weights=fetch)
    decoder = Decoder(size, size, download_weights=fetch)
    models = {
        "diffusion_model": unet,
        "image_encoder": image_encoder,
        "decoder": decoder,
        "text_encoder": text_encoder,
    }
    for key, path in files.items():
        _load(models[key], path)
    if files:
        weights_id = "sd-v1-" + _file_id(list(files.values()))
    else:
        weights_id = "sd-v1-random" if random_weights else "sd-v1-kerascv"
    return Preset(
        spec=spec,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        diffusion_model=unet,
        image_encoder=image_encoder,
        decoder=decoder,
        weights_id=weights_id,
    )
