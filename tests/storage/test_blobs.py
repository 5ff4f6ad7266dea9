"""Blob store: atomic writes, safe keys, listing and prefix deletion (file:// and memory://)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.blobs import BlobStore, keys
from storage.errors import StorageError


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "file":
        yield BlobStore(tmp_path.as_uri())
    else:
        root = f"memory://dreambot-test-{uuid.uuid4().hex}"
        blobs = BlobStore(root)
        yield blobs
        if blobs.fs.exists(blobs.root):
            blobs.fs.rm(blobs.root, recursive=True)


def test_put_get_exists_size(store: BlobStore) -> None:
    key = keys.photo("job1", 0, "ab" * 32)
    assert not store.exists(key)
    store.put(key, b"hello")
    assert store.exists(key) and store.get(key) == b"hello" and store.size(key) == 5
    store.put(key, b"bye")
    assert store.get(key) == b"bye"
    with pytest.raises(StorageError, match="not found"):
        store.get(keys.photo("job1", 1, "cd" * 32))


def test_a_write_that_fails_midway_leaves_nothing_and_the_old_object_intact(
    store: BlobStore,
) -> None:
    key = keys.model("m1", "lora.weights.h5")
    store.put(key, b"old complete object")
    with pytest.raises(RuntimeError), store.open_write(key) as fh:
        fh.write(b"new half")
        raise RuntimeError("disk full")
    assert store.get(key) == b"old complete object"
    assert store.list(keys.model_prefix("m1")) == [key]
    fresh = keys.model("m2", "lora.weights.h5")
    with pytest.raises(RuntimeError), store.open_write(fresh) as fh:
        fh.write(b"partial")
        raise RuntimeError("killed")
    assert not store.exists(fresh)
    assert store.list(keys.model_prefix("m2")) == []


def test_readers_never_see_an_unfinished_write(store: BlobStore) -> None:
    key = keys.output("job9", 0)
    with store.open_write(key) as fh:
        fh.write(b"png bytes")
        assert not store.exists(key)
        assert store.list(keys.outputs_prefix("job9")) == []
    assert store.get(key) == b"png bytes"


def test_delete_prefix_removes_only_that_prefix(store: BlobStore) -> None:
    for i in range(3):
        store.put(keys.photo("job1", i, f"{i:064x}"), b"x")
    store.put(keys.photo("job10", 0, "f" * 64), b"keep")
    assert store.delete_prefix(keys.photos_prefix("job1")) == 3
    assert store.list(keys.photos_prefix("job1")) == []
    assert store.list(keys.photos_prefix("job10")) == [keys.photo("job10", 0, "f" * 64)]
    assert store.delete_prefix(keys.photos_prefix("nothing")) == 0
    with pytest.raises(StorageError):
        store.delete_prefix("photos/job10")  # no trailing slash could match job100


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd.jpg", "a/b", "", ".hidden", "x" * 200, "ok..no", "sp ace"]
)
def test_keys_refuse_anything_but_ids_and_hashes(bad: str) -> None:
    with pytest.raises(StorageError):
        keys.photo(bad, 0, "ab")


def test_raw_keys_cannot_escape_the_root(store: BlobStore) -> None:
    for bad in ("../outside", "/etc/passwd", "a/../../b"):
        with pytest.raises(StorageError):
            store.put(bad, b"x")


def test_put_file_and_get_file_round_trip(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"\x00" * (3 << 20) + b"end")
    key = keys.checkpoint("job1", "weights.h5")
    store.put_file(key, str(src))
    dst = tmp_path / "dst.bin"
    store.get_file(key, str(dst))
    assert dst.read_bytes() == src.read_bytes()
