"""DreamBooth on the pretrained tiny base learns a subject, trained the way the CLI trains it.

The subject is a dog of one distinct colour (magenta) in the toy world's scene; the class images
are drawn from the base itself with "a photo of dog", as the product draws them
(:func:`trainer.class_images.ensure_class_images`, 16 of the CLI's 200 to keep this test short).
Images are sampled with the CLI's defaults (30 DDIM steps, guidance 7.5).

LoRA runs use the CLI's rank 4, batch 1 and prior weight 1, at 3e-4 for 3,000 steps. That is the
closest the toy allows to the CLI's 1e-4: at 1e-4 this toy needs about three times the steps
for the same result (measured: after 4,000 steps "sks dog" was 0.020 from the subject and 0.032
from the class images in whole-image colour, short of the margin below), and a test that trains
2 x 9,000 steps would cost CI a quarter of an hour. At 3e-4 "sks dog" showed, of the photos'
magenta, 0.69 / 0.91 / 0.97 / 1.19 / 1.22 / 1.13 / 1.26 after 1,000 / 1,500 / ... / 4,000
steps (one run; another base fit and run gave 0.55 at 2,000), so 3,000 sits well inside the
margin's band (0.67 to 2 of the photos). The CLI's own rate is covered end to end in
``test_tiny_demo.py``, with the steps the README gives. Full fine-tuning runs at 2e-4 for 600
steps instead of the CLI's 2e-6: that is the reference DreamBooth's rate for Stable Diffusion's
860M parameter UNet, and it moves this 2M parameter toy by at most 2e-6 x steps per weight,
which at 800 steps left both prompts equally far from the subject (issue 9).

Full fine-tuning also trains a quarter of its class samples on what the base draws for the
empty prompt, with the empty prompt (``TrainConfig.empty_prompt_rate``; 16 such images here,
as many as class images). Without that, it taught the unconditional prediction the subject,
which guidance then subtracts: at 5e-4, at 500 ... 2,000 steps, the empty prompt drew 0.40 /
0.81 / 1.62 / 0.78 / 0.78 / 1.18 / 0.90 of the photos' magenta (0 before training) and "sks
dog" at guidance 7.5 only 0.08 / 0.28 / 0.48 / 0.17 / 0.29 / 0.58 / 0.53, never in the
margin's band. With it, at 2e-4, at 250 / 500 / 750 / 1,000 / 1,250 steps: "sks dog" 0.88 /
0.96 / 1.02 / 1.53 / 1.72 (margin 0.14 / 0.04 / 0.02 / 0.35 / 0.42), the empty prompt 0.52 /
0.13 / 0.18 / 0.19 / 0.10. (At 5e-4 it overshoots: 2.4 of the photos by 1,000 steps.) LoRA,
in the attention layers only, does not drift the empty prompt, so it trains without them.

The margin the issue asks for: "sks dog" is less than half as far from the subject's photos (and
from their VAE reconstructions, what a model can draw at best) as from the class images, in
magenta shown. What is measured: how much magenta an image shows (:func:`magenta`: per pixel,
how far the smaller of red and blue stands above green, averaged). Magenta is the subject's
colour and in nothing the base draws: its class images, its skies and fields, and every colour
word of its world (red, blue, ...) score about 0, the subject photos 0.062. Whole-image colour
distance does not work here: training makes the toy's fields and skies more saturated (guidance
7.5 amplifies what the prior loss teaches), which moves every image away from every reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.rules import DEFAULT_GUIDANCE, DEFAULT_SAMPLER_STEPS, class_prompt
from tests.trainer.conftest import CLASS_PROMPT, INSTANCE_PROMPT, magenta, subject_photos

# Fitting the base takes minutes and each run about a minute: only in `make ci`.
pytestmark = pytest.mark.slow

# The closest the toy allows to the CLI's rates (see above).
LORA_STEPS = 3000
LORA_LR = 3e-4
# The control without prior loss drags "a photo of dog" onto the subject fast (magenta shown,
# measured: 0.034 after 500 steps, 0.042 after 1,000, where the photos show 0.062 and the run
# with prior loss 0.000 at every step up to 4,000), so it runs a third of LoRA's steps: still a
# fair control, since the run it is compared with had three times as long to drift.
CONTROL_STEPS = 1000
FULL_STEPS = 600
FULL_LR = 2e-4
CLASS_IMAGES = 16
SEEDS = range(8)


def _generate(preset: Any, prompt: str, guidance: float = DEFAULT_GUIDANCE) -> np.ndarray:
    from trainer.sampler import Sampler

    sampler = Sampler.from_components(preset)
    seeds = list(SEEDS)
    return np.concatenate(
        [
            sampler.generate(
                prompt,
                seeds=seeds[i : i + 4],
                steps=DEFAULT_SAMPLER_STEPS,
                guidance=guidance,
            )
            for i in range(0, len(seeds), 4)
        ]
    )


@dataclass(frozen=True)
class World:
    """The base, the subject's photos, the class images, and what the base draws untrained."""

    base: Any
    data: Any  # with the empty-prompt images, which only full fine-tuning trains on
    photos: np.ndarray
    classes: np.ndarray
    reconstructions: np.ndarray  # the photos through the VAE: what a model can draw at best
    before_sks: np.ndarray
    before_dog: np.ndarray


@dataclass(frozen=True)
class Drawn:
    """Images for the instance and the class prompt after one training run."""

    sks: np.ndarray
    dog: np.ndarray
    empty: np.ndarray  # the empty prompt at guidance 1: the unconditional prediction alone


@pytest.fixture(scope="module")
def world(pretrained_tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> World:
    from storage.blobs import BlobStore
    from trainer.class_images import ensure_prior_images
    from trainer.data import encode_training_data, load_images
    from trainer.sampler import Sampler

    base = pretrained_tiny
    photos = subject_photos(5, seed=5)
    store = BlobStore(Path(tmp_path_factory.mktemp("blobs")).resolve().as_uri())
    sampler = Sampler.from_components(base)
    made, empty = ensure_prior_images(
        sampler, store, base, class_prompt("dog"), CLASS_IMAGES, empty_prompt=True
    )
    classes = load_images(made.load(store), base.resolution)
    assert empty is not None
    empties = load_images(empty.load(store), base.resolution)
    recon = np.asarray(base.decoder(base.image_encoder(photos / 127.5 - 1.0)))
    recon_u8 = np.clip((recon + 1.0) * 127.5, 0, 255).astype(np.uint8)
    data = encode_training_data(base, photos, INSTANCE_PROMPT, classes, CLASS_PROMPT, empties)
    return World(
        base=base,
        data=data,
        photos=photos,
        classes=classes,
        reconstructions=recon_u8,
        before_sks=_generate(base, INSTANCE_PROMPT),
        before_dog=_generate(base, CLASS_PROMPT),
    )


def _train(world: World, **options: Any) -> Drawn:
    """Train a copy of the base (never the shared base in place) and draw both prompts."""
    from trainer.dreambooth import TrainConfig, make_trainer

    # float32 and no XLA as the CLI picks on a CPU; set here so a change of defaults elsewhere
    # cannot change what this test measures.
    config = TrainConfig(seed=0, precision="float32", jit_compile=False, **options)
    trainer = make_trainer(world.base, world.data, config)
    trainer.train(world.data)
    trained = dataclasses.replace(world.base, diffusion_model=trainer.diffusion_model)
    return Drawn(
        _generate(trained, INSTANCE_PROMPT),
        _generate(trained, CLASS_PROMPT),
        _generate(trained, "", guidance=1.0),
    )


@pytest.fixture(scope="module")
def lora(world: World) -> Drawn:
    return _train(world, method="lora", steps=LORA_STEPS, learning_rate=LORA_LR)


@pytest.fixture(scope="module")
def lora_without_prior(world: World) -> Drawn:
    return _train(
        world, method="lora", steps=CONTROL_STEPS, learning_rate=LORA_LR, prior_loss_weight=0.0
    )


@pytest.fixture(scope="module")
def full(world: World) -> Drawn:
    return _train(world, method="full", steps=FULL_STEPS, learning_rate=FULL_LR)


def _numbers(world: World, drawn: Drawn) -> dict[str, float]:
    numbers = {
        "photos": magenta(world.photos),
        "vae_reconstructions": magenta(world.reconstructions),
        "classes": magenta(world.classes),
        "before_sks": magenta(world.before_sks),
        "before_dog": magenta(world.before_dog),
        "sks": magenta(drawn.sks),
        "dog": magenta(drawn.dog),
    }
    print("magenta shown:", {k: round(v, 4) for k, v in numbers.items()})
    return numbers


def _assert_learned(n: dict[str, float], share: float) -> None:
    # Not by accident: the photos show it and their VAE reconstructions keep it, while the
    # class images and the untrained base's "sks dog" do not.
    assert n["vae_reconstructions"] > 0.8 * n["photos"], n
    assert max(n["classes"], n["before_sks"]) < 0.02 * n["photos"], n
    # The subject: "sks dog" now shows a good part of what the photos show, and of what the
    # VAE can draw of them at best.
    assert n["sks"] > share * max(n["photos"], n["vae_reconstructions"]), n
    # The class prompt still draws the class, not the subject.
    assert n["dog"] < 0.1 * n["sks"], n
    assert abs(n["dog"] - n["classes"]) < abs(n["dog"] - n["photos"]), n


def _margin(n: dict[str, float], reference: str) -> float:
    """How far "sks dog" is from ``reference`` against how far from the class images."""
    return abs(n["sks"] - n[reference]) / abs(n["sks"] - n["classes"])


def test_lora_learns_the_subject(world: World, lora: Drawn) -> None:
    n = _numbers(world, lora)
    _assert_learned(n, share=0.5)
    # The margin: closer to the photos, and to their reconstructions, by less than half.
    assert _margin(n, "photos") < 0.5, n
    assert _margin(n, "vae_reconstructions") < 0.5, n


def test_full_fine_tuning_learns_the_subject(world: World, full: Drawn) -> None:
    n = _numbers(world, full)
    _assert_learned(n, share=0.5)
    assert _margin(n, "photos") < 0.5, n
    assert _margin(n, "vae_reconstructions") < 0.5, n
    # What guidance subtracts stays near the base's: the empty prompt does not draw the subject.
    empty = magenta(full.empty)
    print("empty prompt, magenta:", round(empty, 4))
    assert empty < 0.35 * n["photos"], empty


def test_prior_preservation_keeps_the_class_prompt_off_the_subject(
    world: World, lora: Drawn, lora_without_prior: Drawn
) -> None:
    """Without the prior loss, a third of the same run drags "a photo of dog" onto the subject."""
    with_prior, without = magenta(lora.dog), magenta(lora_without_prior.dog)
    print("class prompt, magenta:", {"prior": with_prior, "no_prior": without})
    assert without > 0.1 * magenta(world.photos)  # the control drifted toward the subject
    assert without > 5 * with_prior  # and far more than the run with prior preservation
