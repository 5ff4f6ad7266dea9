"""Presets: shapes, ids read from the tokenizer, KerasCV parity, and clear sd-v1 errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.errors import ConfigError, UserFacingError
from trainer.errors import PromptTooLong, WeightsNotFound
from trainer.presets import (
    SD_V1_FILES,
    alphas_cumprod_schedule,
    build_preset,
    kerascv_pipeline,
    timestep_embedding,
    write_bpe_vocab,
)


def test_tiny_ids_come_from_the_tokenizer(tiny_preset: Any) -> None:
    tok = tiny_preset.tokenizer
    assert tiny_preset.end_of_text_id == tok.end_of_text == len(tok.vocab) - 1
    assert tiny_preset.start_of_text_id == tok.start_of_text
    assert tiny_preset.pad_id == tok.end_of_text
    ids = tiny_preset.tokenize(["a photo of sks dog"])
    assert ids.shape == (1, 77)
    assert ids[0, 0] == tok.start_of_text
    # "a", "photo", "of", "sks", "dog" are one token each in the tiny vocabulary
    assert ids[0, 6] == tok.end_of_text
    assert (ids[0, 7:] == tiny_preset.pad_id).all()


def test_tiny_model_shapes(tiny_preset: Any) -> None:
    import tensorflow as tf

    assert tiny_preset.latent_size == 8 and tiny_preset.resolution == 64
    context = tiny_preset.encode_prompts(["a photo of sks dog", "a dog"])
    assert context.shape == (2, 77, 64)
    images = tf.random.uniform((2, 64, 64, 3), -1, 1, seed=1)
    posterior = tiny_preset.posterior_encoder(images)
    assert posterior.shape == (2, 8, 8, 8)
    mean = tiny_preset.image_encoder(images)
    np.testing.assert_allclose(mean, posterior[..., :4] * tiny_preset.latent_scale, atol=1e-5)
    eps = tiny_preset.diffusion_model([mean, timestep_embedding(tf.constant([1, 999])), context])
    assert eps.shape == (2, 8, 8, 4)
    assert tiny_preset.decoder(mean).shape == (2, 64, 64, 3)
    assert tiny_preset.text_encoder.inputs[0].shape[1] == 77


def test_prompt_too_long_is_a_user_error(tiny_preset: Any) -> None:
    with pytest.raises(PromptTooLong) as info:
        tiny_preset.tokenize(["a photo of sks dog", "dog " * 80])
    assert isinstance(info.value, UserFacingError) and info.value.code == "prompt_too_long"
    assert info.value.message == (
        "The prompt is too long: it is 82 tokens and at most 77 fit. Please shorten it."
    )
    assert (info.value.tokens, info.value.limit) == (82, 77)  # 80 words, start and end
    assert len(tiny_preset.tokenize(["dog " * 75])[0]) == 77  # exactly full still fits


def test_timestep_embedding_and_schedule_match_kerascv(tiny_preset: Any) -> None:
    import tensorflow as tf

    sd = kerascv_pipeline(tiny_preset)
    ours = timestep_embedding(tf.constant([0, 17, 500, 999])).numpy()
    for row, t in zip(ours, [0, 17, 500, 999], strict=True):
        np.testing.assert_allclose(row, sd._get_timestep_embedding(t, 1)[0], atol=1e-5)
    theirs, _ = sd._get_initial_alphas(list(range(1000)))
    np.testing.assert_allclose(alphas_cumprod_schedule(), theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tiny_preset.alphas_cumprod, alphas_cumprod_schedule())


def test_kerascv_pipeline_runs_tiny_weights(tiny_preset: Any) -> None:
    sd = kerascv_pipeline(tiny_preset)
    images = sd.text_to_image("a photo of sks dog", num_steps=2, seed=3)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8


def test_bpe_vocab_file_format(tmp_path: Path) -> None:
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    path = write_bpe_vocab(["sks", "dog", "sks"], tmp_path / "bpe.txt.gz")
    tok = SimpleTokenizer(str(path))
    # 256 bytes, 256 bytes with </w>, 2 + 2 merges, start and end
    assert len(tok.vocab) == 512 + 4 + 2
    ids = tok.encode("sks dog")
    assert len(ids) == 4 and tok.decode(ids[1:-1]) == "sks dog "
    assert tok.encode("zebra")[1:-1]  # words outside the list still encode, byte by byte
    assert path.read_bytes() == write_bpe_vocab(["sks", "dog"], tmp_path / "b2.gz").read_bytes()


def test_sd_v1_missing_weight_file_names_file_and_dir(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound) as info:
        build_preset("sd-v1", weights_dir=tmp_path)
    assert SD_V1_FILES["diffusion_model"] in str(info.value)
    assert f"WEIGHTS_DIR={tmp_path}" in str(info.value)


def test_sd_v1_missing_bpe_is_explained(tmp_path: Path) -> None:
    import h5py

    for key, name in SD_V1_FILES.items():
        if key != "bpe":
            h5py.File(tmp_path / name, "w").close()  # HDF5, as KerasCV's files are
    with pytest.raises(ConfigError, match="BPE_PATH"):
        build_preset("sd-v1", weights_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_preset("sd-v1", weights_dir=tmp_path, bpe_path=tmp_path / "nope.gz")


def test_sd_v1_needs_weights_or_download() -> None:
    with pytest.raises(ConfigError, match="WEIGHTS_DIR"):
        build_preset("sd-v1")


def test_bad_preset_and_resolution() -> None:
    with pytest.raises(ConfigError, match="Unknown preset"):
        build_preset("sd-xl")
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_preset("tiny", resolution=72)
    with pytest.raises(ConfigError, match="multiple of 64"):
        build_preset("sd-v1", resolution=500)
