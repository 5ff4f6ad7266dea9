"""Where checkpoint objects go: a local folder, or a job's prefix in the blob store.

Large objects are streamed in (``open_write``: committed only when the block succeeds) and read
back through a local file (``fetch``), so neither side holds a whole checkpoint in memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Protocol

from storage.blobs import BlobStore, keys
from storage.errors import StorageError

__all__ = ["BlobCheckpointStore", "CheckpointStore", "DirCheckpointStore"]


class CheckpointStore(Protocol):
    """Where checkpoint objects go: a local folder, or a job's prefix in the blob store."""

    def open_write(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """A stream whose object appears under ``name`` only if the block succeeds."""
        ...

    def read(self, name: str) -> bytes | None: ...

    def fetch(self, name: str) -> AbstractContextManager[Path | None]:
        """A local file holding the object (None if it is missing), valid inside the block."""
        ...

    def remove(self, name: str) -> None: ...

    def names(self) -> list[str]: ...


class DirCheckpointStore:
    """Checkpoint objects as files in one folder (written to a temp name, synced, renamed)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextmanager
    def open_write(self, name: str) -> Iterator[IO[bytes]]:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        try:
            with tmp.open("wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, name: str) -> bytes | None:
        path = self.path / name
        return path.read_bytes() if path.is_file() else None

    @contextmanager
    def fetch(self, name: str) -> Iterator[Path | None]:
        path = self.path / name
        yield path if path.is_file() else None

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def names(self) -> list[str]:
        """Every file, unfinished temp files of a killed process included (so they get removed)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_file())


class BlobCheckpointStore:
    """Checkpoint objects under ``checkpoints/<job_id>/`` of a :class:`BlobStore`."""

    def __init__(self, store: BlobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def open_write(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return self.store.open_write(keys.checkpoint(self.job_id, name))

    def read(self, name: str) -> bytes | None:
        try:
            return self.store.get(keys.checkpoint(self.job_id, name))
        except StorageError:
            return None

    @contextmanager
    def fetch(self, name: str) -> Iterator[Path | None]:
        with tempfile.TemporaryDirectory(prefix="dreambot-ckpt-") as tmp:
            local = Path(tmp) / name
            try:
                self.store.get_file(keys.checkpoint(self.job_id, name), str(local))
            except StorageError:
                yield None
                return
            yield local

    def remove(self, name: str) -> None:
        self.store.delete(keys.checkpoint(self.job_id, name))

    def names(self) -> list[str]:
        prefix = keys.checkpoint_prefix(self.job_id)
        return [key.rsplit("/", 1)[-1] for key in self.store.list(prefix)]
