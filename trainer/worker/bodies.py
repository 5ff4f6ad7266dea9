"""The blocking halves of the jobs: what runs on the TensorFlow thread.

Each body reads its inputs from the blob store, writes every output atomically, writes the
result JSON last (so a re-run returns it instead of recomputing), and checks its stop token
between steps. A training also runs waiting generation requests between its steps.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from storage.blobs import keys
from storage.errors import StorageError
from storage.jobs import (
    SAMPLE_SEEDS,
    GenerateResult,
    GenerateSpec,
    JobFailed,
    Stage,
    TrainResult,
    TrainSpec,
    result_key,
)
from storage.rules import DEFAULT_SAMPLER_STEPS, MAX_SEED, class_prompt, instance_prompt, seeds_from
from trainer.worker.progress import ProgressReporter
from trainer.worker.runtime import Runtime
from trainer.worker.tfthread import Stopped, StopToken

__all__ = ["generate_body", "train_body"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _release(fn: Callable[P, R]) -> Callable[P, R]:
    """Re-raise :class:`Stopped` without the frames that hold the trainer, then collect, so a
    cancelled training frees its memory before the next job."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        reason: str | None = None
        try:
            return fn(*args, **kwargs)
        except Stopped as exc:
            reason = str(exc)
        finally:
            gc.collect()
        raise Stopped(reason)

    return run


def _photos(rt: Runtime, spec: TrainSpec) -> list[bytes]:
    try:
        return [rt.store.get(key) for key in spec.photo_keys]
    except StorageError as exc:
        raise JobFailed(
            "The photos of this training are no longer in storage, so it cannot run. "
            "Please start the training again.",
            code="photos_missing",
        ) from exc


@_release
def train_body(rt: Runtime, spec: TrainSpec, report: ProgressReporter, token: StopToken) -> str:
    """Train, export to the blob store, draw the sample images, return TrainResult JSON."""
    from trainer.checkpoints import BlobCheckpointStore
    from trainer.class_images import ClassImageSpec, ensure_class_images
    from trainer.data import load_images
    from trainer.dreambooth import TrainConfig
    from trainer.export import upload_model
    from trainer.training import StepReport, TrainJob, run_training

    started = time.monotonic()
    base = rt.base
    if (spec.preset, spec.resolution) != (base.name, base.resolution):
        raise JobFailed(
            f"This training needs the {spec.preset} model at {spec.resolution}px, and this "
            f"worker runs {base.name} at {base.resolution}px.",
            code="wrong_worker",
        )
    report.stage(Stage.PREPARING, "reading the photos")
    instance = load_images(_photos(rt, spec), base.resolution)
    classes = None
    if spec.class_images:
        report.stage(Stage.CLASS_IMAGES, total=spec.class_images)

        def on_group(done: int, missing: int) -> None:
            report.step(Stage.CLASS_IMAGES, done, missing)
            token.check()
            rt.tf.run_urgent()
            rt.cache.use_base()

        rt.cache.use_base()
        cache_spec = ClassImageSpec.for_preset(base, class_prompt(spec.class_name))
        made = ensure_class_images(
            rt.sampler, rt.store, cache_spec, spec.class_images, progress=on_group
        )
        classes = load_images(made.load(rt.store), base.resolution)
    token.check()
    config = TrainConfig(
        method=spec.method,  # type: ignore[arg-type]
        steps=spec.steps,
        lora_rank=spec.lora_rank,
        seed=spec.seed,
        checkpoint_every=rt.config.checkpoint_every,
        jit_compile=rt.config.xla,  # None: the trainer's choice for this device
    )
    losses: list[float] = []

    def on_step(step: StepReport) -> None:
        losses.append(step.loss)
        report.step(Stage.TRAINING, step.step, step.total, loss=step.loss, eta_s=step.eta_seconds)
        token.check()  # raising here stops Keras' fit between two steps
        rt.tf.run_urgent()  # generation requests waiting on this worker go first

    report.stage(Stage.TRAINING, "starting", total=spec.steps)
    job = TrainJob(identifier=spec.identifier, class_name=spec.class_name, config=config)
    rt.cache.use_base()  # the trainer copies the base: it must be the base's own weights
    with tempfile.TemporaryDirectory(prefix="dreambot-train-") as out:
        meta = run_training(
            base,
            job,
            instance,
            classes,
            out,
            checkpoints=BlobCheckpointStore(rt.store, spec.job_id),
            progress=on_step,
        )
        token.check()
        report.stage(Stage.EXPORTING, "saving the model", step=spec.steps, total=spec.steps)
        files = upload_model(out, rt.store, spec.model_id)
        hub_repo = _push_to_hub(rt, Path(out), spec.model_id)
    sample_keys = _draw_samples(rt, spec)
    result = TrainResult(
        job_id=spec.job_id,
        model_id=spec.model_id,
        model_prefix=keys.model_prefix(spec.model_id),
        files=files,
        sha256=meta.sha256,
        size_bytes=sum(rt.store.size(key) for key in files),
        steps=meta.steps,
        final_loss=losses[-1] if losses and math.isfinite(losses[-1]) else 0.0,
        seconds=round(time.monotonic() - started, 3),
        sample_keys=sample_keys,
        hub_repo=hub_repo,
    )
    text = result.to_json()
    rt.store.put(result_key(spec.job_id), text.encode())
    rt.store.delete_prefix(keys.checkpoint_prefix(spec.job_id))
    report.stage(Stage.DONE, step=spec.steps, total=spec.steps)
    return text


def _push_to_hub(rt: Runtime, model_dir: Path, model_id: str) -> str | None:
    """Hosting is optional: a failed push is logged, and the model stays in the blob store."""
    if rt.hub is None:
        return None
    try:
        return rt.hub.push(model_dir, model_id)
    except Exception:
        log.exception("could not push model %s to the Hub", model_id)
        return None


def _draw_samples(rt: Runtime, spec: TrainSpec) -> list[str]:
    """Four images of "a photo of <identifier> <class>" from fixed seeds, beside the model
    (drawn through the generation cache, which also warms it for the user's first /imagine)."""
    sampler = rt.cache.sampler_for(spec.model_id)
    pngs = sampler.generate_png(
        instance_prompt(spec.identifier, spec.class_name),
        seeds=list(SAMPLE_SEEDS),
        steps=DEFAULT_SAMPLER_STEPS,
    )
    out = []
    for index, png in enumerate(pngs):
        key = keys.model(spec.model_id, f"sample-{index}.png")
        rt.store.put(key, png)
        out.append(key)
    return out


def _seeds(spec: GenerateSpec) -> list[int]:
    if not spec.seeds:
        return seeds_from(secrets.randbelow(MAX_SEED - spec.n_images), spec.n_images)
    if len(spec.seeds) != spec.n_images:
        raise JobFailed(
            f"The request names {len(spec.seeds)} seeds for {spec.n_images} images.",
            code="bad_spec",
        )
    return list(spec.seeds)


@_release
def generate_body(
    rt: Runtime, spec: GenerateSpec, report: ProgressReporter, token: StopToken
) -> str:
    """Draw the images, store them, return GenerateResult JSON."""
    started = time.monotonic()
    seeds = _seeds(spec)
    report.stage(Stage.GENERATING, "loading the model", total=spec.steps)
    sampler = rt.cache.sampler_for(spec.model_id)
    token.check()

    def on_steps(done: int, total: int) -> None:
        report.step(Stage.GENERATING, done, total)
        token.check()

    pngs = sampler.generate_png(
        spec.prompt,
        seeds=seeds,
        negative_prompt=spec.negative_prompt,
        steps=spec.steps,
        guidance=spec.guidance,
        progress=on_steps,
        progress_every=max(1, spec.steps // 4),
    )
    image_keys = []
    for index, png in enumerate(pngs):
        key = keys.output(spec.job_id, index)
        rt.store.put(key, png)
        image_keys.append(key)
    result = GenerateResult(
        job_id=spec.job_id,
        image_keys=image_keys,
        seeds=seeds,
        seconds=round(time.monotonic() - started, 3),
    )
    text = result.to_json()
    rt.store.put(result_key(spec.job_id), text.encode())
    report.stage(Stage.DONE, step=spec.steps, total=spec.steps)
    return text
