"""Model presets: the only module that imports KerasCV.

``sd-v1`` is KerasCV's Stable Diffusion v1 (real classes, real weight files from WEIGHTS_DIR or
KerasCV's download). ``tiny`` wires the same KerasCV building blocks at small widths with random
init from a seed and a small BPE vocabulary built from our word list, so everything runs offline
on a CPU in tests. Both expose the same :class:`Preset` surface, so the trainer, exporter and
sampler never ask which preset they hold.
"""

from __future__ import annotations

import gzip
import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras_cv.src.models.stable_diffusion.clip_tokenizer import (
    SimpleTokenizer,
    bytes_to_unicode,
)
from keras_cv.src.models.stable_diffusion.decoder import Decoder
from keras_cv.src.models.stable_diffusion.diffusion_model import (
    DiffusionModel,
    ResBlock,
    SpatialTransformer,
    Upsample,
)
from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder
from keras_cv.src.models.stable_diffusion.noise_scheduler import NoiseScheduler
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock
from keras_cv.src.models.stable_diffusion.text_encoder import (
    CLIPEmbedding,
    CLIPEncoderLayer,
    TextEncoder,
    quick_gelu,
)

from storage.errors import ConfigError, UserFacingError
from trainer.errors import WeightsNotFound

__all__ = [
    "PRESETS",
    "SD_V1_FILES",
    "Preset",
    "PresetSpec",
    "build_autoencoder",
    "build_diffusion_model",
    "build_preset",
    "kerascv_pipeline",
    "timestep_embedding",
    "write_bpe_vocab",
]

LATENT_SCALE = 0.18215
TIMESTEP_DIM = 320

# File names exactly as KerasCV downloads them, so a WEIGHTS_DIR can be filled from its cache.
SD_V1_FILES = {
    "diffusion_model": "kcv_diffusion_model.h5",
    "image_encoder": "vae_encoder.h5",
    "decoder": "kcv_decoder.h5",
    "text_encoder": "kcv_encoder.h5",
    "bpe": "bpe_simple_vocab_16e6.txt.gz",
}


@dataclass(frozen=True)
class PresetSpec:
    """Shapes of one preset; everything else (latent size, context width) is derived."""

    name: str
    resolution: int
    unet_widths: tuple[int, ...]
    unet_layers_per_block: int
    head_size: int
    text_width: int
    text_layers: int
    text_heads: int
    vae_widths: tuple[int, ...]
    max_prompt_length: int = 77
    vocab_size: int = 49408
    latent_channels: int = 4
    latent_scale: float = LATENT_SCALE
    timestep_dim: int = TIMESTEP_DIM

    @property
    def latent_size(self) -> int:
        return self.resolution // 8

    @property
    def context_width(self) -> int:
        return self.text_width


PRESETS: dict[str, PresetSpec] = {
    "sd-v1": PresetSpec(
        name="sd-v1",
        resolution=512,
        unet_widths=(320, 640, 1280, 1280),
        unet_layers_per_block=2,
        head_size=40,
        text_width=768,
        text_layers=12,
        text_heads=12,
        vae_widths=(128, 256, 512, 512),
    ),
    "tiny": PresetSpec(
        name="tiny",
        resolution=64,
        unet_widths=(32, 64),
        unet_layers_per_block=1,
        head_size=32,
        text_width=64,
        text_layers=2,
        text_heads=2,
        vae_widths=(32, 64, 64),
    ),
}


def timestep_embedding(timesteps: tf.Tensor, dim: int = TIMESTEP_DIM) -> tf.Tensor:
    """Sinusoidal embedding of a batch of timesteps, [B] -> [B, dim], in one vectorised op.

    Same formula as KerasCV's sampler (cosines first), so weights trained here sample there.
    """
    half = dim // 2
    freqs = tf.exp(-np.log(10000.0) * tf.range(half, dtype=tf.float32) / half)
    args = tf.cast(tf.reshape(timesteps, (-1, 1)), tf.float32) * freqs[None, :]
    return tf.concat([tf.cos(args), tf.sin(args)], axis=-1)


@dataclass(eq=False)
class Preset:
    """A built base model: tokenizer, encoders, UNet, decoder and noise schedule."""

    spec: PresetSpec
    tokenizer: SimpleTokenizer
    text_encoder: keras.Model
    diffusion_model: keras.Model
    image_encoder: keras.Model
    decoder: keras.Model
    noise_scheduler: NoiseScheduler
    weights_id: str
    _posterior: keras.Model | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    @property
    def latent_size(self) -> int:
        return self.spec.latent_size

    @property
    def latent_scale(self) -> float:
        return self.spec.latent_scale

    @property
    def max_prompt_length(self) -> int:
        return self.spec.max_prompt_length

    @property
    def start_of_text_id(self) -> int:
        return int(self.tokenizer.start_of_text)

    @property
    def end_of_text_id(self) -> int:
        return int(self.tokenizer.end_of_text)

    @property
    def pad_id(self) -> int:
        """CLIP pads with its end-of-text token; read it from the tokenizer, never hard-code."""
        return self.end_of_text_id

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """Cumulative alphas of the training schedule (float32[1000]); the sampler uses these."""
        return np.asarray(self.noise_scheduler.alphas_cumprod, dtype=np.float32)

    @property
    def posterior_encoder(self) -> keras.Model:
        """VAE encoder up to the mean / log-variance (8 channels, unscaled)."""
        if self._posterior is None:
            enc = self.image_encoder
            self._posterior = keras.Model(enc.inputs, enc.layers[-2].output)
        return self._posterior

    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [B, max_prompt_length], padded with ``pad_id``."""
        length = self.max_prompt_length
        rows = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt)
            if len(ids) > length:
                raise UserFacingError(
                    f"The prompt is too long ({len(ids)} tokens, at most {length}).",
                    code="prompt_too_long",
                )
            rows.append(ids + [self.pad_id] * (length - len(ids)))
        return np.asarray(rows, dtype=np.int32)

    def encode_tokens(self, tokens: np.ndarray | tf.Tensor) -> tf.Tensor:
        """Text-encoder context for token ids [B, L] -> [B, L, context_width]."""
        tokens = tf.convert_to_tensor(tokens, dtype=tf.int32)
        batch = tf.shape(tokens)[0]
        positions = tf.tile(tf.range(self.max_prompt_length, dtype=tf.int32)[None], [batch, 1])
        out = self.text_encoder([tokens, positions], training=False)
        return tf.cast(out, tf.float32)

    def encode_prompts(self, prompts: Sequence[str]) -> tf.Tensor:
        """Text-encoder context for a list of prompts."""
        return self.encode_tokens(self.tokenize(prompts))


def write_bpe_vocab(words: Sequence[str], path: Path) -> Path:
    """Write a BPE merges file in SimpleTokenizer's gzip format that spells each word as one token.

    Merges go left to right through each word (``p h``, ``ph o`` … ``phot o</w>``); every merge
    result is in the vocabulary, so any text still encodes (into byte tokens where no merge fits).
    """
    byte_encoder = bytes_to_unicode()
    merges: list[str] = []
    seen: set[str] = set()
    for word in dict.fromkeys(w.strip().lower() for w in words if w.strip()):
        symbols = [byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        current = symbols[0]
        for sym in symbols[1:]:
            merge = f"{current} {sym}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            current += sym
    # No trailing newline: SimpleTokenizer would read the empty last line as one more merge.
    text = "#version: dreambot-tiny\n" + "\n".join(merges)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.encode("utf-8"))
    return path


def _tiny_bpe_path() -> Path:
    words = resources.files("trainer.assets").joinpath("tiny_words.txt").read_text("utf-8")
    digest = hashlib.sha256(b"v2\n" + words.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"dreambot-tiny-bpe-{digest}.txt.gz"
    if not path.exists():
        tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
        write_bpe_vocab(words.split(), tmp)
        tmp.replace(path)
    return path


def _tiny_unet(spec: PresetSpec) -> keras.Model:
    size, widths, n = spec.latent_size, spec.unet_widths, spec.unet_layers_per_block
    context = keras.layers.Input((spec.max_prompt_length, spec.context_width), name="context")
    t_in = keras.layers.Input((spec.timestep_dim,), name="timestep_embedding")
    latent = keras.layers.Input((size, size, spec.latent_channels), name="latent")
    t_emb = keras.layers.Dense(4 * widths[0])(t_in)
    t_emb = keras.layers.Activation("swish")(t_emb)
    t_emb = keras.layers.Dense(4 * widths[0])(t_emb)

    def transformer(width: int) -> SpatialTransformer:
        return SpatialTransformer(width // spec.head_size, spec.head_size, fully_connected=False)

    x = PaddedConv2D(widths[0], 3, padding=1)(latent)
    skips = [x]
    for level, width in enumerate(widths):
        for _ in range(n):
            x = ResBlock(width)([x, t_emb])
            x = transformer(width)([x, context])
            skips.append(x)
        if level < len(widths) - 1:
            x = PaddedConv2D(width, 3, strides=2, padding=1)(x)
            skips.append(x)
    x = ResBlock(widths[-1])([x, t_emb])
    x = transformer(widths[-1])([x, context])
    x = ResBlock(widths[-1])([x, t_emb])
    for level in reversed(range(len(widths))):
        for _ in range(n + 1):
            x = keras.layers.Concatenate()([x, skips.pop()])
            x = ResBlock(widths[level])([x, t_emb])
            x = transformer(widths[level])([x, context])
        if level > 0:
            x = Upsample(widths[level])(x)
    x = keras.layers.GroupNormalization(epsilon=1e-5)(x)
    x = keras.layers.Activation("swish")(x)
    out = PaddedConv2D(spec.latent_channels, 3, padding=1)(x)
    return keras.Model([latent, t_in, context], out, name="diffusion_model")


def _tiny_text_encoder(spec: PresetSpec) -> keras.Model:
    length = spec.max_prompt_length
    tokens = keras.layers.Input((length,), dtype="int32", name="tokens")
    positions = keras.layers.Input((length,), dtype="int32", name="positions")
    x = CLIPEmbedding(spec.vocab_size, spec.text_width, length)([tokens, positions])
    for _ in range(spec.text_layers):
        x = CLIPEncoderLayer(spec.text_width, spec.text_heads, activation=quick_gelu)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model([tokens, positions], x, name="text_encoder")


class _ScaleMean(keras.layers.Layer):  # type: ignore[misc]
    """Keep the mean (first 4 channels) and scale it, as KerasCV's encoder's last layer does."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x[..., :4] * LATENT_SCALE


def _tiny_image_encoder(spec: PresetSpec) -> keras.Sequential:
    w = spec.vae_widths
    if len(w) != 3:
        raise ConfigError("the VAE halves the image three times: give three vae_widths")
    layers: list[Any] = [keras.layers.Input((None, None, 3)), PaddedConv2D(w[0], 3, padding=1)]
    for width in w:
        layers.append(ResnetBlock(width))
        layers.append(PaddedConv2D(width, 3, padding=((0, 1), (0, 1)), strides=2))
    layers += [
        ResnetBlock(w[-1]),
        keras.layers.GroupNormalization(epsilon=1e-5),
        keras.layers.Activation("swish"),
        PaddedConv2D(8, 3, padding=1),
        PaddedConv2D(8, 1),
        _ScaleMean(),
    ]
    return keras.Sequential(layers, name="image_encoder")


def _tiny_decoder(spec: PresetSpec) -> keras.Sequential:
    w = spec.vae_widths[::-1]
    size = spec.latent_size
    layers: list[Any] = [
        keras.layers.Input((size, size, spec.latent_channels)),
        keras.layers.Rescaling(1.0 / LATENT_SCALE),
        PaddedConv2D(4, 1),
        PaddedConv2D(w[0], 3, padding=1),
        ResnetBlock(w[0]),
    ]
    for width in w:
        layers += [
            keras.layers.UpSampling2D(2),
            PaddedConv2D(width, 3, padding=1),
            ResnetBlock(width),
        ]
    layers += [
        keras.layers.GroupNormalization(epsilon=1e-5),
        keras.layers.Activation("swish"),
        PaddedConv2D(3, 3, padding=1),
    ]
    return keras.Sequential(layers, name="decoder")


def build_autoencoder(spec: PresetSpec, *, seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """A fresh, randomly initialised VAE (encoder, decoder) of a tiny-style ``spec``.

    For tests and benches that need an autoencoder of their own (e.g. one fitted to synthetic
    images so generated pixels can be compared with photos).
    """
    if spec.name == "sd-v1":
        raise ConfigError("sd-v1 uses KerasCV's VAE; load it with build_preset")
    keras.utils.set_random_seed(seed)
    return _tiny_image_encoder(spec), _tiny_decoder(spec)


def _noise_scheduler() -> NoiseScheduler:
    """The schedule Stable Diffusion v1 was trained with (KerasCV's sampler constants match it)."""
    return NoiseScheduler(
        train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
    )


def build_diffusion_model(
    spec: PresetSpec, *, dtype_policy: str | None = None, download: bool = False
) -> keras.Model:
    """The UNet of ``spec``, random init unless ``download`` (sd-v1), under ``dtype_policy``."""
    previous = keras.config.dtype_policy()
    if dtype_policy is not None:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        if spec.name == "sd-v1":
            return DiffusionModel(
                spec.resolution, spec.resolution, spec.max_prompt_length, download_weights=download
            )
        return _tiny_unet(spec)
    finally:
        keras.config.set_dtype_policy(previous)


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
    return path


def _build_sd_v1(
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
        models[key].load_weights(str(path))
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
        noise_scheduler=_noise_scheduler(),
        weights_id=weights_id,
    )


def _build_tiny(
    spec: PresetSpec, *, bpe_path: Path | None, seed: int, dtype_policy: str | None
) -> Preset:
    keras.utils.set_random_seed(seed)
    tokenizer = SimpleTokenizer(str(bpe_path or _tiny_bpe_path()))
    text_encoder = _tiny_text_encoder(spec)
    unet = build_diffusion_model(spec, dtype_policy=dtype_policy)
    image_encoder = _tiny_image_encoder(spec)
    decoder = _tiny_decoder(spec)
    return Preset(
        spec=spec,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        diffusion_model=unet,
        image_encoder=image_encoder,
        decoder=decoder,
        noise_scheduler=_noise_scheduler(),
        weights_id=f"tiny-seed{seed}-r{spec.resolution}",
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
) -> Preset:
    """Build a preset's models.

    ``tiny`` is randomly initialised from ``seed``. ``sd-v1`` loads KerasCV's files from
    ``weights_dir``, downloads them when ``download`` is set, or (``random_weights``, benches only)
    keeps random init. ``dtype_policy`` (e.g. ``mixed_float16``) applies to the UNet, the only
    model that trains.
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
        return _build_tiny(spec, bpe_path=bpe, seed=seed, dtype_policy=dtype_policy)
    return _build_sd_v1(
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
