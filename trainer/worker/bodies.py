"""The blocking halves of the jobs: what runs on the TensorFlow thread.

Each body reads its inputs from the blob store, writes every output atomically, writes the
result JSON last (so a re-run returns it instead of recomputing), and checks its stop token
between steps. A training also runs waiting generation requests between its steps.

Every image a worker draws goes through :func:`draw_png`, one denoising step per call of the
sampler's compiled step. XLA compiles once per input shape, and a span of several steps is a
shape of its own, so spans that follow the step count recompile for every new step count (~14 s
on the tiny preset here); with one step per call the shapes depend only on the resolution and
the number of images, and :func:`warm_up` compiles the default request's shapes at startup. The
cost is one return to Python per step (about 7 ms on the tiny preset on CPU, less than a UNet
step at real size).
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
from storage.rules import (
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGES,
    DEFAULT_SAMPLER_STEPS,
    MAX_SEED,
    class_prompt,
    instance_prompt,
    seeds_from,
)
from trainer.sampler import Sampler
from trainer.worker.progress import ProgressReporter
from trainer.worker.runtime import Runtime
from trainer.worker.tfthread import Stopped, StopToken

__all__ = ["draw_png", "generate_body", "train_body", "warm_up"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Steps drawn by :func:`warm_up`: with one step per compiled call, two steps compile every shape
# a request of the default size uses.
WARM_UP_STEPS = 2


def draw_png(
    sampler: Sampler,
    prompt: str,
    seeds: list[int],
    *,
    steps: int,
    negative_prompt: str = "",
    guidance: float = DEFAULT_GUIDANCE,
    on_step: Callable[[int, int], None] | None = None,
) -> list[bytes]:
    """PNG images, one compiled denoising step per call (see the module docstring)."""
    return sampler.generate_png(
        prompt,
        seeds=seeds,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance=guidance,
        progress=on_step or _no_progress,
        progress_every=1,
    )


def _no_progress(done: int, total: int) -> None:
    pass


def warm_up(rt: Runtime) -> float:
    """Compile the base sampler for a default /imagine request (``DEFAULT_IMAGES`` images, any
    step count) before the worker takes jobs, so the first user does not wait for XLA. Other
    image counts compile on their first request. Returns the seconds it took."""
    started = time.perf_counter()
    rt.cache.use_base()
    draw_png(rt.sampler, "", list(range(DEFAULT_IMAGES)), steps=WARM_UP_STEPS)
    return time.perf_counter() - started


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
    from trainer.class_images import ensure_prior_images
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
    config = TrainConfig(
        method=spec.method,  # type: ignore[arg-type]
        steps=spec.steps,
        lora_rank=spec.lora_rank,
        seed=spec.seed,
        checkpoint_every=rt.config.checkpoint_every,
        jit_compile=rt.config.xla,  # None: the trainer's choice for this device
    )
    with_empty = bool(config.empty_prompt_rate)
    classes = empties = None
    if spec.class_images:
        report.stage(Stage.CLASS_IMAGES, total=spec.class_images * (2 if with_empty else 1))

        def on_group(done: int, missing: int) -> None:
            report.step(Stage.CLASS_IMAGES, done, missing)
            token.check()
            rt.tf.run_urgent()
            rt.cache.use_base()

        rt.cache.use_base()
        made, made_empty = ensure_prior_images(
            rt.sampler,
            rt.store,
            base,
            class_prompt(spec.class_name),
            spec.class_images,
            empty_prompt=with_empty,
            progress=on_group,
        )
        classes = load_images(made.load(rt.store), base.resolution)
        if made_empty is not None:
            empties = load_images(made_empty.load(rt.store), base.resolution)
    token.check()
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
            empty_images=empties,
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
    pngs = draw_png(
        sampler,
        instance_prompt(spec.identifier, spec.class_name),
        list(SAMPLE_SEEDS),
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

    pngs = draw_png(
        sampler,
        spec.prompt,
        seeds,
        negative_prompt=spec.negative_prompt,
        steps=spec.steps,
        guidance=spec.guidance,
        on_step=on_steps,
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
