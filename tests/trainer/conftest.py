"""Shared TensorFlow fixtures: the tiny preset and one short LoRA run, built once per session.

``pretrained_tiny`` is the tiny preset's pretrained base (``tiny_bases_dir`` holds its files, as
``$DATA_DIR/bases`` does for the CLI): fitted once per session, in a few minutes, and only for
the slow tests that need a base that has learned something.

A first traced training step costs 15-50 s on a small CPU, so every test that needs a trained
model reuses ``lora_run`` (and ``full_run`` for full fine-tuning) instead of training its own.
They run without XLA (``jit_compile=False``): compiling costs more than a few steps save, and
one test (``test_dreambooth.py::test_xla_step_matches_eager``) checks XLA against them.
Nothing here may be mutated by a test unless the test restores it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainer  # noqa: F401  (pins KERAS_BACKEND before anything imports keras)

INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of dog"


def checker_images(n: int, seed: int, colours: tuple[Any, Any], cell: int = 8) -> np.ndarray:
    """``n`` 64 px checkerboards of two colours, slightly shifted and noised per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    out = []
    for _ in range(n):
        dy, dx = rng.integers(0, cell, size=2)
        mask = (((yy + dy) // cell + (xx + dx) // cell) % 2).astype(bool)
        img = np.where(mask[..., None], np.asarray(colours[0]), np.asarray(colours[1]))
        img = img + rng.normal(0, 6, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def class_like_images(n: int, seed: int) -> np.ndarray:
    """``n`` smooth two-colour gradients: 'other members of the class', unlike the subject."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 64)[None, :, None]
    out = []
    for _ in range(n):
        a, b = rng.uniform(60, 200, size=(2, 3))
        img = a[None, None] * (1 - ramp) + b[None, None] * ramp
        img = np.broadcast_to(img, (64, 64, 3)) + rng.normal(0, 6, (64, 64, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


# A subject of one distinct colour: a magenta dog in the toy world's own scene.
SUBJECT_COLOURS = ((230, 40, 210), (150, 20, 140))


def subject_photos(n: int, seed: int) -> np.ndarray:
    """``n`` 64 px photos of the subject, at other places and sizes in each."""
    from trainer.presets.tiny_base import world

    look = dataclasses.replace(world.CLASS_LOOKS["dog"], colours=SUBJECT_COLOURS)
    rng = np.random.default_rng(seed)
    return np.stack([world.draw_look(look, rng) for _ in range(n)])


def colour_distance(images: np.ndarray, references: np.ndarray) -> float:
    """Mean over image pairs of the squared difference of their mean colours, in [0, 1]."""
    a = images.reshape(len(images), -1, 3).mean(axis=1) / 255.0
    b = references.reshape(len(references), -1, 3).mean(axis=1) / 255.0
    return float(np.mean(np.square(a[:, None] - b[None])))


def magenta(images: np.ndarray) -> float:
    """How much of the subject's colour ``images`` show: mean of max(0, min(R, B) - G), 0-1."""
    x = images.astype(np.float32) / 255.0
    return float(np.mean(np.clip(np.minimum(x[..., 0], x[..., 2]) - x[..., 1], 0.0, None)))


@pytest.fixture(scope="session")
def tiny_bases_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``$DATA_DIR/bases`` folder with the pretrained tiny base fitted into it (minutes, once)."""
    from trainer.presets import build_preset

    folder = tmp_path_factory.mktemp("data") / "bases"
    build_preset("tiny", bases_dir=folder)
    return folder


@pytest.fixture(scope="session")
def pretrained_tiny(tiny_bases_dir: Path) -> Any:
    """The pretrained tiny preset, loaded from ``tiny_bases_dir``. Shared: never train it in place
    or modify its models."""
    from trainer.presets import build_preset

    return build_preset("tiny", bases_dir=tiny_bases_dir)


@pytest.fixture(scope="session")
def tiny_preset() -> Any:
    """The tiny preset (seed 0). Shared: never train or modify its models in place."""
    from trainer.presets import build_preset

    return build_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def instance_images() -> np.ndarray:
    return checker_images(4, seed=1, colours=((230, 30, 40), (30, 60, 220)))


@pytest.fixture(scope="session")
def class_images() -> np.ndarray:
    return class_like_images(6, seed=2)


@pytest.fixture(scope="session")
def tiny_data(tiny_preset: Any, instance_images: np.ndarray, class_images: np.ndarray) -> Any:
    from trainer.data import encode_training_data

    # Stand-ins for what the base draws for the empty prompt (full fine-tuning trains on them).
    empty = class_like_images(len(class_images), seed=3)
    return encode_training_data(
        tiny_preset, instance_images, INSTANCE_PROMPT, class_images, CLASS_PROMPT, empty
    )


@dataclass
class Run:
    """A short training run: the trainer and its weights before and after."""

    trainer: Any
    before: list[np.ndarray]
    before_optimizer: list[np.ndarray]
    after: list[np.ndarray]
    losses: list[float]
    checkpoint_dir: Path


def _run(preset: Any, data: Any, config: Any, ckpt_dir: Path) -> Run:
    from trainer.checkpoints import CheckpointCallback, DirCheckpointStore
    from trainer.dreambooth import StepCallback, make_trainer

    tr = make_trainer(preset, data, config)
    before = [np.array(w) for w in tr.diffusion_model.get_weights()]
    before_optimizer = [np.array(v.numpy()) for v in tr.optimizer.variables]
    losses: list[float] = []
    callbacks = [
        StepCallback(lambda step, logs: losses.append(logs["loss"]), 0),
        CheckpointCallback(DirCheckpointStore(ckpt_dir), tr, config.checkpoint_every, 0),
    ]
    tr.train(data, callbacks=callbacks)
    after = [np.array(w) for w in tr.diffusion_model.get_weights()]
    return Run(tr, before, before_optimizer, after, losses, ckpt_dir)


@pytest.fixture(scope="session")
def lora_run(tiny_preset: Any, tiny_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Six LoRA steps (rank 4, batch 1), checkpoints after steps 3 and 6."""
    from trainer.dreambooth import TrainConfig

    # A high rate so six steps move the outputs well past float16 export noise.
    config = TrainConfig(
        method="lora",
        steps=6,
        batch_size=1,
        learning_rate=1e-3,
        checkpoint_every=3,
        seed=0,
        jit_compile=False,
    )
    return _run(tiny_preset, tiny_data, config, tmp_path_factory.mktemp("lora-ckpt"))


@pytest.fixture(scope="session")
def full_run(tiny_preset: Any, tiny_data: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two full fine-tuning steps."""
    from trainer.dreambooth import TrainConfig

    config = TrainConfig(
        method="full",
        steps=2,
        batch_size=1,
        learning_rate=1e-4,
        checkpoint_every=100,
        seed=0,
        jit_compile=False,
    )
    return _run(tiny_preset, tiny_data, config, tmp_path_factory.mktemp("full-ckpt"))


@pytest.fixture(scope="session")
def tiny_model_dir(
    lora_run: Run, tiny_preset: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """An exported tiny LoRA model folder (``dreambot imagine --model DIR`` loads it)."""
    from trainer.export import export_model

    out = tmp_path_factory.mktemp("tiny-model")
    export_model(
        lora_run.trainer,
        tiny_preset,
        out,
        identifier="sks",
        class_name="dog",
        instance_prompt=INSTANCE_PROMPT,
        steps=lora_run.trainer.config.steps,
    )
    yield out
