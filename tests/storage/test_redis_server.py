"""The embedded redis-server: starts, persists queued data when asked, stops by pid."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis

from storage.redis_server import EmbeddedRedis, ping


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_persistent_server_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=True)
    url = server.start()
    pid = server.pid
    assert pid is not None and url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(url)
    client.rpush("dreambot:queue:train", "job-1")
    client.close()
    server.stop()
    assert not _alive(pid)
    assert not ping("127.0.0.1", server.port)
    assert (tmp_path / "redis" / "appendonly.aof").exists()

    again = EmbeddedRedis(tmp_path / "redis", persist=True)
    client = redis.Redis.from_url(again.start())
    try:
        assert client.lrange("dreambot:queue:train", 0, -1) == [b"job-1"]
    finally:
        client.close()
        again.stop()


def test_test_server_has_no_persistence_and_binds_loopback(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()


def test_a_taken_port_is_reported_not_hung(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = EmbeddedRedis(tmp_path, persist=False, port=port)
        with pytest.raises(Exception, match="could not start redis-server"):
            server.start(timeout=3)
    assert server.process is None


def test_context_manager_stops_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), EmbeddedRedis(tmp_path, persist=False) as server:
        pid = server.pid
        raise RuntimeError("boom")
    assert pid is not None and not _alive(pid)
