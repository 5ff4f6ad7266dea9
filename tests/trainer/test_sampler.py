"""Sampler on the tiny preset: KerasCV's DDIM, one UNet call per step, per-image seeds."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from storage.errors import InvalidArgument
from trainer.errors import PromptTooLong
from trainer.presets import kerascv_pipeline
from trainer.sampler import Sampler, ddim_timesteps

PROMPT = "a photo of sks dog"
KERASCV_PAD_ID = 49407


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.fixture(scope="module")
def sampler(tiny_preset: Any) -> Sampler:
    return Sampler.from_components(tiny_preset)


class CountingUNet:
    """Records the batch size of every UNet call; everything else goes to the real model."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inputs = model.inputs
        self.batches: list[int] = []

    def __call__(self, inputs: list[tf.Tensor], training: bool = False) -> tf.Tensor:
        self.batches.append(int(inputs[0].shape[0]))
        return self.model(inputs, training=training)


def test_ids_and_length_come_from_the_tokenizer(sampler: Sampler, tiny_preset: Any) -> None:
    assert sampler.pad_id == tiny_preset.tokenizer.end_of_text != KERASCV_PAD_ID
    assert sampler.max_prompt_length == tiny_preset.max_prompt_length
    ids = tiny_preset.tokenizer.encode(PROMPT)
    tokens = sampler.tokens(PROMPT)
    assert len(tokens) == sampler.max_prompt_length
    assert tokens[: len(ids)] == ids
    assert set(tokens[len(ids) :]) == {sampler.pad_id}
    assert tokens == tiny_preset.tokenize([PROMPT])[0].tolist()  # what training saw


def test_overlong_prompt_is_refused_with_a_clear_message(sampler: Sampler) -> None:
    long_prompt = " ".join(["dog"] * sampler.max_prompt_length)
    with pytest.raises(PromptTooLong) as info:
        sampler.generate(long_prompt, seeds=[0], steps=1)
    assert info.value.code == "prompt_too_long"
    assert info.value.message.startswith("The prompt is too long")
    assert f"at most {sampler.max_prompt_length}" in info.value.message
    with pytest.raises(PromptTooLong, match="The negative prompt is too long"):
        sampler.generate(PROMPT, seeds=[0], steps=1, negative_prompt=long_prompt)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": []}, "the number of images must be 1 to 4 (got 0)"),
        ({"seeds": [1, 2, 3, 4, 5]}, "the number of images must be 1 to 4 (got 5)"),
        ({"seeds": [-1]}, "seed must be 0 to"),
        ({"seeds": [1], "steps": 0}, "steps must be 1 to 1000 (got 0)"),
        ({"seeds": [1], "guidance": -1.0}, "guidance must be 0 or more"),
    ],
)
def test_bad_requests_break_the_shared_rules(sampler: Sampler, kwargs: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        sampler.generate(PROMPT, **kwargs)
    assert info.value.message.startswith(message)


def test_one_unet_call_per_step_with_both_halves(tiny_preset: Any) -> None:
    unet = CountingUNet(tiny_preset.diffusion_model)
    eager = Sampler(
        tokenizer=tiny_preset.tokenizer,
        text_encoder=tiny_preset.text_encoder,
        diffusion_model=unet,
        decoder=tiny_preset.decoder,
        compile=False,
    )
    images = eager.generate(PROMPT, seeds=[1, 2, 3], steps=3)
    assert images.shape == (3, 64, 64, 3)
    assert images.dtype == np.uint8
    assert unet.batches == [6, 6, 6]


def test_same_seed_same_image_and_images_depend_only_on_their_seed(sampler: Sampler) -> None:
    pair = sampler.generate(PROMPT, seeds=[11, 12], steps=4)
    again = sampler.generate(PROMPT, seeds=[11, 12], steps=4)
    alone = sampler.generate(PROMPT, seeds=[11], steps=4)
    swapped = sampler.generate(PROMPT, seeds=[12, 11], steps=4)
    assert np.array_equal(pair, again)
    # Other batch sizes may round differently in float kernels: at most one level here and there.
    assert _diff(pair[0], alone[0]).max() <= 1
    assert _diff(pair[0], alone[0]).mean() < 0.01
    assert _diff(pair[0], swapped[1]).max() <= 1
    assert _diff(pair[1], swapped[0]).max() <= 1
    assert _diff(pair[0], pair[1]).mean() > 5


def test_guidance_and_negative_prompt_change_the_image(sampler: Sampler) -> None:
    base = sampler.generate(PROMPT, seeds=[5], steps=3, guidance=7.5)
    weak = sampler.generate(PROMPT, seeds=[5], steps=3, guidance=1.0)
    negative = sampler.generate(PROMPT, seeds=[5], steps=3, guidance=7.5, negative_prompt="dog")
    assert _diff(base, weak).mean() > 1
    assert _diff(base, negative).mean() > 1


def test_negative_prompt_replaces_the_unconditional_prompt(sampler: Sampler) -> None:
    # With the negative prompt equal to the prompt both halves agree, so guidance cannot matter.
    low = sampler.generate(PROMPT, seeds=[5], steps=3, guidance=1.0, negative_prompt=PROMPT)
    high = sampler.generate(PROMPT, seeds=[5], steps=3, guidance=9.0, negative_prompt=PROMPT)
    assert _diff(low, high).max() <= 1


def test_progress_is_reported_without_changing_the_image(sampler: Sampler) -> None:
    calls: list[tuple[int, int]] = []
    quiet = sampler.generate(PROMPT, seeds=[4], steps=5)
    chunked = sampler.generate(
        PROMPT, seeds=[4], steps=5, progress=lambda *a: calls.append(a), progress_every=2
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert _diff(quiet, chunked).max() <= 1


def test_compiled_step_matches_eager(sampler: Sampler, tiny_preset: Any) -> None:
    eager = Sampler.from_components(tiny_preset, compile=False)
    reference = eager.generate(PROMPT, seeds=[3], steps=3)
    assert _diff(sampler.generate(PROMPT, seeds=[3], steps=3), reference).max() <= 1


def test_matches_kerascv_text_to_image(tiny_preset: Any) -> None:
    # KerasCV pads with a hard-coded 49407; given the same pad id and noise, the images agree.
    ours = Sampler.from_components(tiny_preset, pad_id=KERASCV_PAD_ID)
    noise = ours.initial_noise([21, 22])
    mine = ours.generate(PROMPT, seeds=[21, 22], steps=5, guidance=7.5, negative_prompt="")
    pipeline = kerascv_pipeline(tiny_preset)
    theirs = pipeline.generate_image(
        pipeline.encode_text(PROMPT),
        negative_prompt="",
        batch_size=2,
        num_steps=5,
        unconditional_guidance_scale=7.5,
        diffusion_noise=noise,
    )
    assert theirs.shape == mine.shape
    assert _diff(mine, theirs).max() <= 2
    assert _diff(mine, theirs).mean() < 0.01


def test_ddim_timesteps_follow_kerascv() -> None:
    assert ddim_timesteps(5).tolist() == [0, 250, 500, 749, 999]
    assert ddim_timesteps(1).tolist() == [0]
    assert len(ddim_timesteps(50)) == 50


def test_png_bytes_hold_the_generated_pixels(sampler: Sampler) -> None:
    pngs = sampler.generate_png(PROMPT, seeds=[8, 9], steps=2)
    arrays = sampler.generate(PROMPT, seeds=[8, 9], steps=2)
    assert len(pngs) == 2
    for png, array in zip(pngs, arrays, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        assert decoded.shape == (64, 64, 3)
        assert np.array_equal(decoded, array)
