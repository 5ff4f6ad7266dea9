"""The queue contract between the bot and the workers (no TensorFlow here).

The queue carries ids, not data: a job is enqueued by function name with one argument, the job
id, which is also arq's ``_job_id`` (so a double click cannot enqueue twice). Workers may run on
other machines without the database, so what a job needs is written by the bot to the blob store
as a spec (``jobs/<id>/spec.json``) before enqueueing; a worker reads it, reports progress to
Redis under ``progress_key(job_id)`` and returns a small result dict through arq.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Self

from storage.blobs import keys
from storage.errors import InvalidArgument, StorageError, UserFacingError
from storage.rules import (
    DEFAULT_CLASS_IMAGES,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGES,
    DEFAULT_LORA_RANK,
    DEFAULT_METHOD,
    DEFAULT_SAMPLER_STEPS,
    DEFAULT_TRAIN_STEPS,
    MAX_CLASS_IMAGES,
    MAX_IMAGES,
    MAX_LORA_RANK,
    MAX_SAMPLER_STEPS,
    MAX_SEED,
    MAX_TRAIN_SEED,
    MAX_TRAIN_STEPS,
    check_guidance,
    check_int,
    check_method,
    check_resolution,
    check_word,
)

__all__ = [
    "GENERATE_FUNCTION",
    "GENERATE_QUEUE",
    "PROGRESS_TTL_S",
    "QUEUES",
    "SAMPLE_SEEDS",
    "TRAIN_FUNCTION",
    "TRAIN_QUEUE",
    "WORKER_KEY_PREFIX",
    "GenerateResult",
    "GenerateSpec",
    "JobCancelled",
    "JobFailed",
    "Progress",
    "Stage",
    "TrainResult",
    "TrainSpec",
    "progress_key",
    "queue_for",
    "result_key",
    "spec_key",
    "worker_key",
]

TRAIN_FUNCTION = "train_model"
GENERATE_FUNCTION = "generate_images"
# arq queue names: training and generation are separate so a long training never blocks /imagine.
TRAIN_QUEUE = "dreambot:queue:train"
GENERATE_QUEUE = "dreambot:queue:generate"
# The queues by the name `dreambot worker --queue` takes.
QUEUES = {"train": TRAIN_QUEUE, "generate": GENERATE_QUEUE}
PROGRESS_TTL_S = 7 * 24 * 3600
# Every live worker process keeps a short-lived key here (who it is, what it runs).
WORKER_KEY_PREFIX = "dreambot:worker:"
# A finished training draws its sample images (for the completion message) from these seeds.
SAMPLE_SEEDS = (0, 1, 2, 3)


def queue_for(function: str) -> str:
    if function == TRAIN_FUNCTION:
        return TRAIN_QUEUE
    if function == GENERATE_FUNCTION:
        return GENERATE_QUEUE
    raise StorageError(f"unknown job function: {function}")


def progress_key(job_id: str) -> str:
    return f"dreambot:progress:{job_id}"


def spec_key(job_id: str) -> str:
    """Blob key of a job's spec (built from the id only)."""
    return keys.job_spec(job_id)


def result_key(job_id: str) -> str:
    """Blob key of a finished job's result JSON (written last, after every output)."""
    return keys.job_result(job_id)


def worker_key(worker_id: str) -> str:
    return f"{WORKER_KEY_PREFIX}{worker_id}"


class JobFailed(UserFacingError):
    """A job that ended with an error; ``message`` is for the person who asked.

    ``permanent`` says whether running it again could help (a bad spec or unusable photos
    never will). It survives arq's pickling of results with every field, which a subclass with
    other constructor arguments would not.
    """

    def __init__(self, message: str, code: str = "job_failed", permanent: bool = True) -> None:
        super().__init__(message, code=code)
        self.permanent = permanent

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code, self.permanent))


class JobCancelled(UserFacingError):
    """The job was cancelled before it finished; nothing was stored."""

    def __init__(self, message: str = "The job was cancelled.") -> None:
        super().__init__(message, code="cancelled")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,))


class _Json:
    """JSON round-trip for the flat dataclasses below; unknown keys are an error."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        try:
            return cls(**data)
        except TypeError as exc:
            raise StorageError(f"malformed {cls.__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StorageError(f"malformed {cls.__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise StorageError(f"malformed {cls.__name__}: not an object")
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class TrainSpec(_Json):
    """Everything a worker needs to train one model."""

    job_id: str
    model_id: str
    photo_keys: list[str]
    class_name: str
    identifier: str
    preset: str = "sd-v1"
    method: str = DEFAULT_METHOD
    steps: int = DEFAULT_TRAIN_STEPS
    resolution: int = 512
    class_images: int = DEFAULT_CLASS_IMAGES
    lora_rank: int = DEFAULT_LORA_RANK
    seed: int = 0

    def __post_init__(self) -> None:
        """The shared rules hold for every spec, whoever wrote it: a worker refuses a bad one
        with the same message the CLI and the bot give, instead of training on it."""
        for value, what in ((self.class_name, "class word"), (self.identifier, "identifier")):
            if check_word(value, what) != value:
                raise InvalidArgument(f"{what} {value!r} must be lower case")
        check_method(self.method)
        check_int(self.steps, "steps", 1, MAX_TRAIN_STEPS)
        check_resolution(self.resolution)
        check_int(self.class_images, "class images", 0, MAX_CLASS_IMAGES)
        check_int(self.lora_rank, "rank", 1, MAX_LORA_RANK)
        check_int(self.seed, "seed", 0, MAX_TRAIN_SEED)


@dataclass(frozen=True, slots=True)
class GenerateSpec(_Json):
    """Everything a worker needs to draw images (model None: the base model)."""

    job_id: str
    prompt: str
    model_id: str | None = None
    model_prefix: str | None = None
    negative_prompt: str = ""
    n_images: int = DEFAULT_IMAGES
    steps: int = DEFAULT_SAMPLER_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seeds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int(self.n_images, "the number of images", 1, MAX_IMAGES)
        check_int(self.steps, "steps", 1, MAX_SAMPLER_STEPS)
        check_guidance(self.guidance)
        for seed in self.seeds:
            check_int(seed, "seed", 0, MAX_SEED)


@dataclass(frozen=True, slots=True)
class TrainResult(_Json):
    job_id: str
    model_id: str
    model_prefix: str
    files: list[str]
    sha256: str
    size_bytes: int
    steps: int
    final_loss: float
    seconds: float
    sample_keys: list[str] = field(default_factory=list)
    hub_repo: str | None = None


@dataclass(frozen=True, slots=True)
class GenerateResult(_Json):
    job_id: str
    image_keys: list[str]
    seeds: list[int]
    seconds: float


class Stage(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    CLASS_IMAGES = "class_images"
    TRAINING = "training"
    EXPORTING = "exporting"
    GENERATING = "generating"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Progress(_Json):
    """What a worker last said about a job; stored as JSON at ``progress_key(job_id)``."""

    job_id: str
    stage: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""
    updated_at: float = field(default_factory=time.time)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0
