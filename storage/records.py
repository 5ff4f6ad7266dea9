"""Frozen records and str Enums shared by the bot and the workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "AuditEntry",
    "ConsentRecord",
    "GuildSettings",
    "Job",
    "JobKind",
    "JobStatus",
    "LedgerState",
    "LimitKind",
    "ModelRecord",
    "QuotaKind",
    "Reservation",
    "TrainMethod",
    "User",
]


class JobKind(StrEnum):
    TRAIN = "train"
    GENERATE = "generate"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class TrainMethod(StrEnum):
    LORA = "lora"
    FULL = "full"


class QuotaKind(StrEnum):
    """What a quota counts, and the window it counts over."""

    TRAIN = "train"  # trainings per calendar month (UTC)
    IMAGES = "images"  # generated images per calendar day (UTC)


class LimitKind(StrEnum):
    """Every limit an admin may set for a guild or override for one member."""

    TRAIN = "train"  # trainings per calendar month (UTC)
    IMAGES = "images"  # generated images per calendar day (UTC)
    MODELS = "models"  # trained models kept at once
    QUEUED = "queued"  # jobs queued or running at once

    @property
    def label(self) -> str:
        return _LIMIT_LABELS[self]


_LIMIT_LABELS = {
    LimitKind.TRAIN: "trainings per month",
    LimitKind.IMAGES: "images per day",
    LimitKind.MODELS: "models kept",
    LimitKind.QUEUED: "jobs queued at once",
}


class LedgerState(StrEnum):
    RESERVED = "reserved"
    COMMITTED = "committed"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GuildSettings:
    guild_id: int
    train_per_month: int | None
    images_per_day: int | None
    allowed_channels: tuple[int, ...]
    prompt_blocklist: tuple[str, ...]
    banned_users: tuple[int, ...]
    max_models: int | None = None
    max_queued_jobs: int | None = None

    def limit(self, kind: LimitKind) -> int | None:
        """The guild's own value for ``kind`` (None: the bot's default applies)."""
        return {
            LimitKind.TRAIN: self.train_per_month,
            LimitKind.IMAGES: self.images_per_day,
            LimitKind.MODELS: self.max_models,
            LimitKind.QUEUED: self.max_queued_jobs,
        }[kind]


@dataclass(frozen=True, slots=True)
class ModelRecord:
    id: str
    owner_id: int
    guild_id: int | None
    name: str
    class_name: str
    identifier: str
    preset: str
    method: TrainMethod
    blob_key: str
    sha256: str
    size_bytes: int
    created_at: datetime
    is_default: bool
    hub_url: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: JobKind
    status: JobStatus
    owner_id: int
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    params: dict[str, Any]
    arq_job_id: str | None
    attempts: int
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    user_id: int
    guild_id: int
    kind: QuotaKind
    amount: int
    period: str
    state: LedgerState
    job_id: str | None


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    id: int
    user_id: int
    guild_id: int | None
    subject: str
    text_version: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    guild_id: int | None
    actor_id: int
    action: str
    target: str | None
    detail: dict[str, Any]
    created_at: datetime
