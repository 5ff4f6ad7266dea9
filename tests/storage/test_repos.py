"""Jobs, models, users, consents and the audit log on a real SQLite file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from storage.errors import StorageError
from storage.records import GuildSettings, JobKind, JobStatus, ModelRecord, QuotaKind, TrainMethod
from storage.repos import Repos


def _model(model_id: str, owner: int = 1, name: str | None = None) -> ModelRecord:
    return ModelRecord(
        id=model_id,
        owner_id=owner,
        guild_id=10,
        name=name or model_id,
        class_name="dog",
        identifier="sks",
        preset="tiny",
        method=TrainMethod.LORA,
        blob_key=f"models/{model_id}/",
        sha256="0" * 64,
        size_bytes=1234,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        is_default=False,
    )


async def test_job_lifecycle_records_times_attempts_and_result(repos: Repos) -> None:
    job = await repos.jobs.create("job1", JobKind.TRAIN, 1, guild_id=10, params={"steps": 5})
    assert job.status is JobStatus.QUEUED and job.params == {"steps": 5}
    assert job.arq_job_id == "job1"
    running = await repos.jobs.transition("job1", JobStatus.RUNNING)
    assert running.attempts == 1 and running.started_at is not None
    requeued = await repos.jobs.transition("job1", JobStatus.QUEUED)
    again = await repos.jobs.transition("job1", JobStatus.RUNNING)
    assert requeued.status is JobStatus.QUEUED and again.attempts == 2
    done = await repos.jobs.transition("job1", JobStatus.SUCCEEDED, result={"model_id": "m"})
    assert done.finished_at is not None and done.result == {"model_id": "m"}
    with pytest.raises(StorageError, match="cannot go from succeeded"):
        await repos.jobs.transition("job1", JobStatus.FAILED, error="late")
    assert (await repos.jobs.active()) == []


async def test_job_ids_are_unique_so_double_clicks_cannot_double_enqueue(repos: Repos) -> None:
    await repos.jobs.create("same", JobKind.GENERATE, 1)
    with pytest.raises(sqlite3.IntegrityError):
        await repos.jobs.create("same", JobKind.GENERATE, 1)


async def test_progress_message_and_queue_views(repos: Repos) -> None:
    await repos.jobs.create("a", JobKind.TRAIN, 1)
    await repos.jobs.create("b", JobKind.GENERATE, 2)
    await repos.jobs.set_message("a", 555, 777)
    a = await repos.jobs.get("a")
    assert a is not None and (a.channel_id, a.message_id) == (555, 777)
    assert [j.id for j in await repos.jobs.active(JobKind.TRAIN)] == ["a"]
    assert [j.id for j in await repos.jobs.for_owner(2, active_only=True)] == ["b"]
    await repos.jobs.transition("b", JobStatus.CANCELLED)
    assert await repos.jobs.for_owner(2, active_only=True) == []
    with pytest.raises(StorageError, match="no such job"):
        await repos.jobs.transition("zzz", JobStatus.RUNNING)


async def test_first_model_is_default_and_default_moves(repos: Repos) -> None:
    first = await repos.models.add(_model("m1"))
    second = await repos.models.add(_model("m2"))
    assert first.is_default and not second.is_default
    assert await repos.models.set_default(1, "m2") is True
    flags = {m.id: m.is_default for m in await repos.models.for_owner(1)}
    assert flags == {"m1": False, "m2": True}
    assert await repos.models.set_default(2, "m1") is False  # not the owner
    with pytest.raises(sqlite3.IntegrityError):
        await repos.models.add(_model("m3", name="m1"))  # names are unique per owner
    assert await repos.models.delete(1, "m1") is True
    assert await repos.models.get("m1") is None


async def test_deleting_a_user_forgets_everything_they_own(repos: Repos) -> None:
    await repos.users.upsert(1, "ann")
    await repos.models.add(_model("m1"))
    await repos.jobs.create("j1", JobKind.TRAIN, 1)
    await repos.quotas.reserve(1, 0, QuotaKind.TRAIN, 1, default_limit=3, job_id="j1")
    await repos.consents.record(1, 10, "my dog", "v1")
    assert await repos.users.delete(1) is True
    for table in ("models", "jobs", "usage_ledger", "consents"):
        row = await repos.db.fetchone(f"SELECT COUNT(*) FROM {table}")
        assert row is not None and row[0] == 0, table


async def test_user_upsert_keeps_name_when_blank(repos: Repos) -> None:
    await repos.users.upsert(1, "ann")
    user = await repos.users.upsert(1, "")
    assert user.name == "ann"


async def test_guild_settings_round_trip(repos: Repos) -> None:
    assert (await repos.guilds.get(5)).allowed_channels == ()
    saved = GuildSettings(5, 2, 30, (11, 12), ("gore",), (99,))
    await repos.guilds.save(saved)
    assert await repos.guilds.get(5) == saved


async def test_consents_and_audit_log_are_kept_in_order(repos: Repos) -> None:
    await repos.consents.record(1, 10, "me", "v1")
    await repos.consents.record(1, 10, "me", "v2")
    assert [c.text_version for c in await repos.consents.for_user(1)] == ["v1", "v2"]
    await repos.audit.log(10, 99, "quota.set", "user:1", {"images_per_day": 5})
    await repos.audit.log(10, 99, "queue.cancel", "job:j1")
    entries = await repos.audit.for_guild(10)
    assert [e.action for e in entries] == ["queue.cancel", "quota.set"]
    assert entries[1].detail == {"images_per_day": 5}
