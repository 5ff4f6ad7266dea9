"""The real `dreambot up` in a subprocess (embedded Redis, a tiny-preset worker, the bot) against
a fake of Discord's gateway and REST on 127.0.0.1: it connects, syncs its commands, answers a
slash command, and a generated image arrives as a multipart upload, the way Discord receives it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.fakes.discord_gateway import MEMBER_USER, FakeGateway, Request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _env(tmp_path: Path, fake: FakeGateway) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DISCORD_TOKEN")}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "MODEL_PRESET": "tiny",  # TINY_BASE=random comes from tests/conftest.py
            "TRAIN_RESOLUTION": "64",
            "DISCORD_TOKEN": "fake.token.value",
            "DISCORD_API_BASE": fake.api_base,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
        }
    )
    return env


def _png_upload(request: Request) -> bool:
    return request.method == "POST" and any(
        (u.filename or "").endswith(".png") and u.data.startswith(b"\x89PNG")
        for u in request.uploads
    )


async def test_the_real_bot_process_answers_imagine_with_an_uploaded_image(
    tmp_path: Path,
) -> None:
    fake = FakeGateway()
    await fake.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreambot",
        "up",
        cwd=tmp_path,
        env=_env(tmp_path, fake),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.wait_for(fake.identified.wait(), 120)
        await asyncio.wait_for(fake.synced.wait(), 60)
        names = {c["name"] for c in fake.commands}
        assert {"train", "imagine", "models", "quota", "forget", "admin"} <= names

        await fake.slash("quota")
        await fake.wait_for(lambda r: r.path.endswith("/callback"), 30, "answer to /quota")

        await fake.slash("imagine", prompt="a photo of dog", count=1, steps=2)
        upload = await fake.wait_for(_png_upload, 300, "image upload")
        assert upload.multipart and upload.path.endswith("/messages")
        assert f"<@{MEMBER_USER['id']}>" in upload.json["content"]  # the member is mentioned
        await fake.wait_for(lambda r: r.method == "DELETE", 30, "progress message removed")
        assert sum(map(_png_upload, fake.requests)) == 1  # delivered once
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        await fake.stop()
        print(out.decode(errors="replace")[-8000:])  # shown by pytest when the test fails
    assert proc.returncode == 0, out.decode(errors="replace")[-5000:]
