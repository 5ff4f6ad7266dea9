"""Data: photo loading, cached posteriors with flips, and step-keyed batches."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from trainer.data import encode_posteriors, load_image, make_dataset, sample_latents
from trainer.errors import TrainingDataError


def _png(width: int, height: int) -> bytes:
    img = Image.new("RGB", (width, height), (10, 200, 30))
    img.paste((250, 0, 0), (0, 0, width // 4, height))  # a red band on the left
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_centre_crops_and_resizes() -> None:
    arr = load_image(_png(200, 100), 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    # the centre square (x 50..150) keeps the green and loses most of the red band (x 0..50)
    assert arr[32, 40, 1] > 150
    assert arr[32, 0, 0] < 250


def test_load_image_rejects_non_images() -> None:
    with pytest.raises(TrainingDataError, match="picture"):
        load_image(b"not an image", 64)


def test_posteriors_cover_flips(tiny_preset: Any, instance_images: np.ndarray) -> None:
    post = encode_posteriors(tiny_preset, instance_images[:2])
    assert post.shape == (2, 2, 8, 8, 8)
    flipped = encode_posteriors(tiny_preset, instance_images[:2, :, ::-1])
    np.testing.assert_allclose(post[:, 1], flipped[:, 0], atol=1e-5)
    assert not np.allclose(post[:, 0], post[:, 1])


def test_posteriors_reject_wrong_size(tiny_preset: Any) -> None:
    with pytest.raises(TrainingDataError, match="64x64"):
        encode_posteriors(tiny_preset, np.zeros((1, 32, 32, 3), np.uint8))


def test_batches_and_draws_are_a_function_of_step(tiny_data: Any) -> None:
    """Photos, flips, noise and timesteps of step k: the same however the dataset started."""
    first = list(make_dataset(tiny_data, 2, seed=5).take(6).as_numpy_iterator())
    resumed = list(make_dataset(tiny_data, 2, seed=5, start_step=3).take(3).as_numpy_iterator())
    keys = {"step", "instance", "class", "latent_noise", "noise", "timesteps"}
    for a, b in zip(first[3:], resumed, strict=True):
        assert a.keys() == b.keys() == keys
        for key in keys:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(first[0]["noise"], first[1]["noise"])
    other = next(make_dataset(tiny_data, 2, seed=6).take(1).as_numpy_iterator())
    for key in ("class", "latent_noise", "noise", "timesteps"):
        assert not np.array_equal(other[key], first[0][key]), key


def test_draws_cover_every_unet_sample(tiny_data: Any) -> None:
    with_prior = next(make_dataset(tiny_data, 3).as_numpy_iterator())
    assert with_prior["noise"].shape == with_prior["latent_noise"].shape == (6, 8, 8, 4)
    assert with_prior["timesteps"].shape == (6,)
    assert with_prior["timesteps"].min() >= 0 and with_prior["timesteps"].max() < 1000
    alone = next(make_dataset(tiny_data, 3, prior=False, timesteps=10).as_numpy_iterator())
    assert alone["noise"].shape == (3, 8, 8, 4) and alone["timesteps"].max() < 10


def test_empty_prompt_images_take_class_rows_at_the_rate(tiny_data: Any) -> None:
    """Drawn rows hold an empty-prompt image instead of a class image; every other draw is as it
    was, and the choice is keyed on the step."""
    plain = list(make_dataset(tiny_data, 2, seed=5).take(200).as_numpy_iterator())
    drawn = list(
        make_dataset(tiny_data, 2, seed=5, empty_prompt_rate=0.25).take(200).as_numpy_iterator()
    )
    empties = {p.tobytes() for p in tiny_data.empty_posteriors.reshape(-1, 8, 8, 8)}
    for a, b in zip(plain, drawn, strict=True):
        assert set(b) == {*a, "empty_prompt"}
        for key in set(a) - {"class"}:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(
            a["class"][~b["empty_prompt"]], b["class"][~b["empty_prompt"]]
        )
        assert all(row.tobytes() in empties for row in b["class"][b["empty_prompt"]])
    rows = np.stack([b["empty_prompt"] for b in drawn])
    assert rows.shape == (200, 2) and 0.18 < rows.mean() < 0.32
    resumed = make_dataset(tiny_data, 2, seed=5, start_step=150, empty_prompt_rate=0.25)
    np.testing.assert_array_equal(next(resumed.as_numpy_iterator())["empty_prompt"], rows[150])
    alone = make_dataset(tiny_data, 2, prior=False, empty_prompt_rate=0.25)
    assert "empty_prompt" not in next(alone.as_numpy_iterator())


def test_one_epoch_pairs_every_class_image_once(tiny_data: Any) -> None:
    """Instance photos repeat to the class set's length; each class image appears once per epoch."""
    cls = tiny_data.class_posteriors  # [6, 2, 8, 8, 8]
    inst = tiny_data.instance_posteriors  # [4, 2, 8, 8, 8]
    assert tiny_data.epoch_length == 6
    batches = list(make_dataset(tiny_data, 3, seed=0).take(2).as_numpy_iterator())

    def which(bank: np.ndarray, sample: np.ndarray) -> int:
        hits = [i for i in range(len(bank)) for f in (0, 1) if np.array_equal(bank[i, f], sample)]
        assert len(hits) == 1
        return hits[0]

    seen_cls = [which(cls, s) for b in batches for s in b["class"]]
    seen_inst = [which(inst, s) for b in batches for s in b["instance"]]
    assert sorted(seen_cls) == list(range(6))
    assert set(seen_inst) == set(range(4))


def test_sample_latents_uses_mean_and_std() -> None:
    import tensorflow as tf

    post = tf.concat([tf.fill((1, 2, 2, 4), 2.0), tf.fill((1, 2, 2, 4), float(np.log(9.0)))], -1)
    zero = sample_latents(post, tf.zeros((1, 2, 2, 4)), 0.5)
    np.testing.assert_allclose(zero, 1.0)
    one = sample_latents(post, tf.ones((1, 2, 2, 4)), 0.5)
    np.testing.assert_allclose(one, (2.0 + 3.0) * 0.5, rtol=1e-5)


def test_batch_larger_than_the_data_uses_every_photo_evenly(tiny_data: Any) -> None:
    """3 photos, batch 5, no class images: each batch spans two or three epochs of the photos."""
    from dataclasses import replace

    three = replace(
        tiny_data,
        instance_posteriors=tiny_data.instance_posteriors[:3],
        class_posteriors=None,
        class_context=None,
    )
    batches = list(make_dataset(three, 5, seed=0, prior=False).take(6).as_numpy_iterator())
    bank = three.instance_posteriors
    seen = [
        i
        for b in batches
        for s in b["instance"]
        for i in range(3)
        for f in (0, 1)
        if np.array_equal(bank[i, f], s)
    ]
    assert len(seen) == 30  # every sample is one of the three photos (or its mirror)
    assert sorted(seen) == sorted([0, 1, 2] * 10)  # 30 samples = 10 whole epochs of 3
