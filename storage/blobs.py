"""Blob store on fsspec: photos in, checkpoints, models and images out.

Workers may live on other machines, so everything large travels through this store (a
``file://`` directory by default; any fsspec URL such as ``s3://bucket/dreambot`` or
``hf://datasets/org/repo`` for multi-machine deployments, ``memory://`` in tests).

Keys are built only from ids and hashes by :mod:`storage.blobs` helpers (never from a user's
file name), and writes are atomic, so a reader sees either the whole old object, the whole new
one, or nothing: on a filesystem an object is written under a temporary name and renamed into
place; on S3 (where a rename is a copy) the upload itself is the atomic step, since an object
appears only when its upload completes, and a failed write aborts the upload.

``s3://`` needs the optional ``s3fs`` package (``pip install -e '.[s3]'``), imported only when
such a URL is opened. Credentials and a non-AWS endpoint (MinIO, R2) come from botocore's usual
environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``. The bucket
must exist; the store never creates buckets.
"""

from __future__ import annotations

import importlib
import posixpath
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

import fsspec

from storage.errors import ConfigError, StorageError

__all__ = [
    "MODEL_METADATA_FILE",
    "BlobKeys",
    "BlobStore",
    "keys",
]

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TMP_MARK = ".tmp-"
# Object stores whose files support ``autocommit=False`` + ``commit()``/``discard()`` (a multipart
# upload completed or aborted), mapped to the module and the pyproject extra that provide them.
_OBJECT_STORES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}


def _segment(value: object) -> str:
    text = str(value)
    if not _SAFE_SEGMENT.match(text) or ".." in text:
        raise StorageError(f"unsafe blob key segment: {text!r}")
    return text


def _join(*parts: object) -> str:
    return "/".join(_segment(p) for p in parts)


class BlobKeys:
    """Every key the project writes. Only ids, hashes and fixed words go in."""

    @staticmethod
    def photo(job_id: str, index: int, sha256: str) -> str:
        """A normalised instance photo of a training job (``index`` keeps input order)."""
        return _join("photos", job_id, f"{index:03d}-{sha256}.png")

    @staticmethod
    def photos_prefix(job_id: str) -> str:
        return _join("photos", job_id) + "/"

    @staticmethod
    def class_image(cache_id: str, index: int) -> str:
        """A generated prior-preservation image, shared by every user of the same class prompt."""
        return _join("class-images", cache_id, f"{index:05d}.png")

    @staticmethod
    def class_images_prefix(cache_id: str) -> str:
        return _join("class-images", cache_id) + "/"

    @staticmethod
    def checkpoint(job_id: str, name: str) -> str:
        """One file of a training job's latest checkpoint."""
        return _join("checkpoints", job_id, name)

    @staticmethod
    def checkpoint_prefix(job_id: str) -> str:
        return _join("checkpoints", job_id) + "/"

    @staticmethod
    def model(model_id: str, name: str) -> str:
        """One file of an exported model (LoRA weights, metadata, or full UNet weights)."""
        return _join("models", model_id, name)

    @staticmethod
    def model_prefix(model_id: str) -> str:
        return _join("models", model_id) + "/"

    @staticmethod
    def job_spec(job_id: str) -> str:
        """What a worker needs to run a job (written by the bot before enqueueing)."""
        return _join("jobs", job_id, "spec.json")

    @staticmethod
    def job_result(job_id: str) -> str:
        """A finished job's result (written by the worker last, so a re-run can return it)."""
        return _join("jobs", job_id, "result.json")

    @staticmethod
    def output(job_id: str, index: int) -> str:
        """A generated image of an imagine job."""
        return _join("outputs", job_id, f"{index:02d}.png")

    @staticmethod
    def outputs_prefix(job_id: str) -> str:
        return _join("outputs", job_id) + "/"


keys = BlobKeys()

# The metadata file beside a model's weights (``keys.model(model_id, MODEL_METADATA_FILE)``):
# the trainer writes it, the bot tells it from the weights file by this name.
MODEL_METADATA_FILE = "model.json"


class BlobStore:
    """A thin, synchronous wrapper over one fsspec filesystem rooted at ``url``.

    Synchronous on purpose: the worker calls it from the training thread, and the bot wraps
    calls in ``asyncio.to_thread``. Missing objects raise :class:`StorageError` ("blob not
    found") on every backend.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        self._object_store = protocol in _OBJECT_STORES
        if self._object_store:
            module, extra = _OBJECT_STORES[protocol]
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(
                    f"BLOB_URL uses {protocol}://, which needs the {module} package: "
                    f"pip install -e '.[{extra}]'"
                ) from exc
            # s3fs caches listings per filesystem object, and another process writing the bucket
            # (a worker, while the bot reads) never invalidates them: exists() and list() would
            # answer from a stale listing. Every call asks the store instead.
            storage_options.setdefault("use_listings_cache", False)
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            raise ConfigError(f"BLOB_URL uses {protocol}://, which is unavailable: {exc}") from exc
        self.fs = fs
        self.root = root.rstrip("/")
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        if "file" in protocols:
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/") or not key:
            raise StorageError(f"invalid blob key: {key!r}")
        return posixpath.join(self.root, key)

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically."""
        if self._object_store:
            # One PUT: the object appears whole or not at all, and no temporary object is left.
            path = self._path(key)
            with self._writing(key):
                self.fs.pipe_file(path, data)
            return
        with self.open_write(key) as fh:
            fh.write(data)

    @contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """Stream an object; it appears under ``key`` only if the block finishes without error."""
        path = self._path(key)
        if self._object_store:
            with self._upload(key, path) as fh:
                yield fh
            return
        parent = posixpath.dirname(path)
        tmp = posixpath.join(parent, f"{_TMP_MARK}{uuid.uuid4().hex}")
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as fh:
                yield fh
            self.fs.mv(tmp, path)
        except BaseException:
            try:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            finally:
                raise

    @contextmanager
    def _upload(self, key: str, path: str) -> Iterator[IO[bytes]]:
        """An object-store upload that is completed only if the block succeeds, else aborted."""
        with self._writing(key):
            fh = self.fs.open(path, "wb", autocommit=False)
        done = False
        try:
            yield fh
            with self._writing(key):
                fh.close()  # uploads the buffered tail as a part; nothing visible yet
                fh.commit()  # completes the multipart upload: the object appears whole
            done = True
        finally:
            if not done:
                fh.discard()  # aborts the multipart upload, drops the buffer
                fh.closed = True  # so garbage collection does not flush the dropped buffer

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """Turn the store's own refusals (a missing bucket or root) into a StorageError."""
        try:
            yield
        except FileNotFoundError as exc:
            raise StorageError(f"cannot write blob {key} under {self.url}: {exc}") from exc

    def put_file(self, key: str, local_path: str) -> None:
        with open(local_path, "rb") as src, self.open_write(key) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    def get(self, key: str) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError as exc:
            raise StorageError(f"blob not found: {key}") from exc
        return data

    def get_file(self, key: str, local_path: str) -> None:
        try:
            self.fs.get_file(self._path(key), local_path)
        except FileNotFoundError as exc:
            raise StorageError(f"blob not found: {key}") from exc

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError as exc:
            raise StorageError(f"blob not found: {key}") from exc

    def _find(self, prefix: str) -> list[str]:
        """Every object under ``prefix`` (none when nothing is there: fsspec's ``find`` returns
        an empty list for a missing folder or S3 prefix)."""
        found: list[str] = self.fs.find(self._path(prefix.rstrip("/")))
        return found

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive, sorted); unfinished temporary writes are hidden."""
        out = []
        for path in self._find(prefix):
            rel = self._relative(path)
            if not posixpath.basename(rel).startswith(_TMP_MARK):
                out.append(rel)
        return sorted(out)

    def _relative(self, path: str) -> str:
        root = self.root.strip("/")
        stripped = path.strip("/")
        if not stripped.startswith(root + "/"):
            raise StorageError(f"{path!r} is outside the blob store root")
        return stripped[len(root) + 1 :]

    def delete(self, key: str) -> None:
        """Remove one object; removing a missing one is not an error."""
        with suppress(FileNotFoundError):
            self.fs.rm(self._path(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (used by ``/forget``); returns how many."""
        if not prefix.endswith("/"):
            raise StorageError("a prefix must end with '/' so it cannot match a sibling key")
        found = self._find(prefix)
        if not found:
            return 0
        base = self._path(prefix.rstrip("/"))
        with suppress(FileNotFoundError):  # someone else deleted it first
            self.fs.rm(base, recursive=True)
        return len(found)
