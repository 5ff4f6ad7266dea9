"""The arq job functions: thin async shells around the bodies that run on the TensorFlow thread.

``train_model(ctx, job_id)`` and ``generate_images(ctx, job_id)`` read the spec from the blob
store (never SQLite), return the stored result when the job already finished, and otherwise run
the body on the worker's one TensorFlow thread. They also decide what happens when something
goes wrong:

- **abort** (``bot.queue.cancel``): the body stops at its next step, the job's checkpoints are
  deleted, progress says cancelled, and arq records the job as aborted;
- **worker stopping** (SIGTERM): the body stops at its next step, checkpoints stay, and arq puts
  the job back on the queue for another worker, which resumes it;
- **timeout** (``TRAIN_TIMEOUT_S`` / ``GENERATE_TIMEOUT_S``): stopped the same way, then failed;
- **a permanent error** (a bad spec, unusable photos, an unknown model, a bad model file): failed
  at once with a plain message (:class:`~storage.jobs.JobFailed`), never retried;
- **a transient error** (network, storage outage, out of memory): retried after
  ``RETRY_BACKOFF_S`` doubled per run, up to ``JOB_MAX_TRIES`` runs, then failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from arq.worker import Retry

from storage.blobs import keys
from storage.errors import DreambotError, StorageError, UserFacingError
from storage.jobs import (
    GENERATE_FUNCTION,
    TRAIN_FUNCTION,
    GenerateSpec,
    JobFailed,
    Stage,
    TrainSpec,
    result_key,
    spec_key,
)
from trainer.worker.bodies import generate_body, train_body
from trainer.worker.progress import ProgressReporter
from trainer.worker.runtime import Runtime
from trainer.worker.tfthread import NORMAL, URGENT, StopToken

__all__ = ["classify", "generate_images", "train_model"]

log = logging.getLogger(__name__)

# TensorFlow's errors that a later run may not meet (matched by name: no TF import here).
_TRANSIENT_TF = {
    "ResourceExhaustedError",
    "UnavailableError",
    "AbortedError",
    "DeadlineExceededError",
}


def classify(exc: BaseException) -> JobFailed:
    """The failure a person sees, and whether a retry could help (``permanent=False``)."""
    if isinstance(exc, JobFailed):
        return exc
    if isinstance(exc, UserFacingError):
        return JobFailed(exc.message, exc.code)
    name = type(exc).__name__
    if isinstance(exc, OSError | MemoryError) or name in _TRANSIENT_TF:
        return JobFailed(
            f"A temporary problem stopped the job ({name}: {exc}).",
            "transient",
            permanent=False,
        )
    if isinstance(exc, DreambotError):  # broken model files, checkpoints, settings: say what
        return JobFailed(f"The job cannot run: {exc}", "job_error")
    return JobFailed(
        f"The job failed because of an internal error ({name}); the worker's log has the details.",
        "internal_error",
    )


def _stored_result(rt: Runtime, job_id: str) -> str | None:
    try:
        return rt.store.get(result_key(job_id)).decode()
    except StorageError:
        return None


def _aborted(ctx: dict[str, Any], job_id: str) -> bool:
    worker = ctx.get("arq_worker")
    return worker is not None and job_id in worker.aborting_tasks


async def _run(
    ctx: dict[str, Any],
    job_id: str,
    function: str,
    load: Callable[[bytes], Any],
    body: Callable[[Runtime, Any, ProgressReporter, StopToken], str],
    *,
    priority: int,
    timeout_s: float,
) -> str:
    rt: Runtime = ctx["runtime"]
    assert rt.writer is not None, "the worker group sets the progress writer"
    report = ProgressReporter(rt.writer, job_id, rt.config.progress_every_s)
    done = await asyncio.to_thread(_stored_result, rt, job_id)
    if done is not None:
        log.info("job %s already finished; returning its stored result", job_id)
        return done
    try:
        spec = load(await asyncio.to_thread(rt.store.get, spec_key(job_id)))
        if spec.job_id != job_id:
            raise JobFailed(f"The spec of job {job_id} names job {spec.job_id}.", "bad_spec")
    except Exception as exc:
        failure = classify(exc)
        report.stage(Stage.FAILED, failure.message)
        await rt.writer.flush()
        raise failure from exc

    token = StopToken()
    rt.jobs_run[function] = rt.jobs_run.get(function, 0) + 1
    future: Future[str] = rt.tf.submit_future(lambda: body(rt, spec, report, token), priority)
    waiter = asyncio.wrap_future(future)  # one waiter, so _stop can collect its outcome
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(waiter)
    except asyncio.CancelledError:
        aborted = _aborted(ctx, job_id)
        await _stop(future, waiter, token, "cancelled" if aborted else "the worker is stopping")
        if aborted:
            await asyncio.to_thread(rt.store.delete_prefix, keys.checkpoint_prefix(job_id))
            report.stage(Stage.CANCELLED, "cancelled")
        else:
            report.stage(Stage.QUEUED, "the worker stopped; another worker will continue it")
        await rt.writer.flush()
        raise
    except TimeoutError:
        await _stop(future, waiter, token, "timed out")
        failure = JobFailed(
            f"The job took longer than the {timeout_s:.0f} s allowed and was stopped.", "timeout"
        )
        report.stage(Stage.FAILED, failure.message)
        await rt.writer.flush()
        raise failure from None
    except Exception as exc:
        failure = classify(exc)
        try_number = int(ctx.get("job_try", 1))
        if not failure.permanent and try_number < rt.config.max_tries:
            delay = rt.config.retry_delay_s(try_number)
            log.warning("job %s: %s; retrying in %.0f s", job_id, failure.message, delay)
            report.stage(Stage.QUEUED, f"{failure.message} Retrying in {delay:.0f} s.")
            await rt.writer.flush()
            raise Retry(defer=delay) from exc
        if failure.code == "internal_error":
            log.error("job %s failed", job_id, exc_info=exc)
        report.stage(Stage.FAILED, failure.message)
        await rt.writer.flush()
        raise failure from exc


async def _stop(
    future: Future[str], waiter: asyncio.Future[str], token: StopToken, reason: str
) -> None:
    """Tell the body to stop and wait until it has (at most one training step)."""
    token.stop(reason)
    if future.cancel():  # not started yet: it never will
        return
    while not waiter.done():  # a second cancel (the worker closing) must not cut this short
        with contextlib.suppress(BaseException):
            await asyncio.shield(waiter)
    if not waiter.cancelled():
        waiter.exception()  # collected: the body's Stopped is how this job was meant to end


async def train_model(ctx: dict[str, Any], job_id: str) -> str:
    """Train one personal model; returns TrainResult JSON."""
    rt: Runtime = ctx["runtime"]
    return await _run(
        ctx,
        job_id,
        TRAIN_FUNCTION,
        TrainSpec.from_json,
        train_body,
        priority=NORMAL,
        timeout_s=rt.config.train_timeout_s,
    )


async def generate_images(ctx: dict[str, Any], job_id: str) -> str:
    """Draw images with the base or a personal model; returns GenerateResult JSON."""
    rt: Runtime = ctx["runtime"]
    return await _run(
        ctx,
        job_id,
        GENERATE_FUNCTION,
        GenerateSpec.from_json,
        generate_body,
        priority=URGENT,
        timeout_s=rt.config.generate_timeout_s,
    )
