"""One training job end to end: images in, an exported model folder out, resumable.

The CLI calls this with a local checkpoint folder; the worker calls it with a
:class:`~trainer.checkpoints.BlobCheckpointStore`, so an interrupted job picks up where it
stopped and a finished one is not redone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.rules import class_prompt, instance_prompt
from trainer.checkpoints import (
    CheckpointCallback,
    CheckpointStore,
    TrainedFrom,
    check_resumable,
    load_checkpoint,
    run_record,
)
from trainer.data import encode_training_data
from trainer.dreambooth import StepCallback, TrainConfig, make_trainer
from trainer.export import ModelMetadata, export_model
from trainer.presets import Preset

__all__ = ["StepReport", "TrainJob", "run_training"]


@dataclass(frozen=True)
class StepReport:
    """One training step's report: step reached, loss, seconds per step and seconds left."""

    step: int
    total: int
    loss: float
    seconds_per_step: float
    eta_seconds: float


StepReportFn = Callable[[StepReport], None]


@dataclass(frozen=True)
class TrainJob:
    """What to train: the subject's identifier and class, and the run's configuration."""

    identifier: str
    class_name: str
    config: TrainConfig
    base_seed: int = 0


def run_training(
    preset: Preset,
    job: TrainJob,
    instance_images: np.ndarray,
    class_images: np.ndarray | None,
    out_dir: Path | str,
    *,
    empty_images: np.ndarray | None = None,
    checkpoints: CheckpointStore | None = None,
    progress: StepReportFn | None = None,
    in_place: bool = False,
    keep: tuple[str, ...] = (),
) -> ModelMetadata:
    """Encode, train (resuming from ``checkpoints`` when they hold a state) and export.

    ``empty_images`` are what the base draws for the empty prompt, needed with class images
    when ``config.empty_prompt_rate`` is above 0 (full fine-tuning's default).

    A checkpoint written by a different run (other photos, class images, identifier, base,
    resolution or training settings) is refused with
    :class:`~trainer.errors.CheckpointMismatch` before anything is encoded.

    ``in_place`` trains the preset's own UNet (no second copy) and, once the photos and prompts
    are encoded, releases the VAE encoder, the text encoder and the decoder, except the parts
    named in ``keep`` (e.g. ``("text_encoder", "decoder")`` to draw samples afterwards). The
    preset then holds the trained model; pass it only when nothing else shares it.
    """
    config = job.config
    origin = TrainedFrom.of(
        identifier=job.identifier,
        class_name=job.class_name,
        weights_id=preset.weights_id,
        resolution=preset.resolution,
        instance_images=instance_images,
        class_images=class_images,
        empty_images=empty_images,
    )
    if checkpoints is not None:  # refuse a checkpoint of another run before encoding anything
        check_resumable(checkpoints, run_record(config, origin), steps=config.steps)
    data = encode_training_data(
        preset,
        instance_images,
        instance_prompt(job.identifier, job.class_name),
        class_images,
        class_prompt(job.class_name),
        empty_images,
    )
    trainer = make_trainer(preset, data, config, in_place=in_place)
    if in_place:
        parts = ("image_encoder", "text_encoder", "decoder")
        preset.release(*(part for part in parts if part not in keep))
    start = 0
    if checkpoints is not None:
        start = load_checkpoint(checkpoints, trainer, origin) or 0
    callbacks = []
    if checkpoints is not None:
        every = config.checkpoint_every
        callbacks.append(CheckpointCallback(checkpoints, trainer, every, start, origin=origin))
    if progress is not None:
        started = time.monotonic()

        def report(step: int, logs: dict[str, float]) -> None:
            per_step = (time.monotonic() - started) / max(1, step - start)
            left = per_step * (config.steps - step)
            progress(StepReport(step, config.steps, logs.get("loss", float("nan")), per_step, left))

        callbacks.append(StepCallback(report, start))
    trainer.train(data, start_step=start, callbacks=callbacks)
    return export_model(
        trainer,
        preset,
        out_dir,
        identifier=job.identifier,
        class_name=job.class_name,
        instance_prompt=instance_prompt(job.identifier, job.class_name),
        steps=config.steps,
        base_seed=job.base_seed,
    )
