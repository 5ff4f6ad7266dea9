"""Blob store: atomic writes, safe keys, listing and prefix deletion.

Every store test runs on each backend: ``file://`` in tmp_path, ``memory://``, and ``s3://``
against a local S3 endpoint (moto's server on 127.0.0.1, a fresh bucket per test). The S3 store
is configured exactly as a user configures one for MinIO or R2: ``AWS_ENDPOINT_URL`` and keys in
the environment, ``BlobStore("s3://bucket/prefix")`` and no other option.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.blobs import BlobStore, keys
from storage.errors import ConfigError, StorageError

REPO = Path(__file__).resolve().parents[2]
HAS_S3 = all(importlib.util.find_spec(m) is not None for m in ("s3fs", "moto"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, shared by the session."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """botocore's standard variables point at the local endpoint; the developer's own AWS
    profile, config and session never leak in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dreambot-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dreambot-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> Iterator[str]:
    """A fresh, empty bucket (deleted with its objects afterwards)."""
    import s3fs

    bucket = f"dreambot-test-{uuid.uuid4().hex[:16]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    yield bucket
    fs.rm(bucket, recursive=True)


@pytest.fixture(params=["file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "file":
        yield BlobStore(tmp_path.as_uri())
    elif request.param == "memory":
        root = f"memory://dreambot-test-{uuid.uuid4().hex}"
        blobs = BlobStore(root)
        yield blobs
        if blobs.fs.exists(blobs.root):
            blobs.fs.rm(blobs.root, recursive=True)
    else:
        if not HAS_S3:
            pytest.skip("s3fs and moto are not installed (pip install -e '.[s3,dev]')")
        bucket = request.getfixturevalue("s3_bucket")
        yield BlobStore(f"s3://{bucket}/blobs")


def test_put_get_exists_size(store: BlobStore) -> None:
    key = keys.photo("job1", 0, "ab" * 32)
    assert not store.exists(key)
    store.put(key, b"hello")
    assert store.exists(key) and store.get(key) == b"hello" and store.size(key) == 5
    store.put(key, b"bye")
    assert store.get(key) == b"bye"
    with pytest.raises(StorageError, match="not found"):
        store.get(keys.photo("job1", 1, "cd" * 32))


def test_missing_objects_raise_not_found_everywhere(store: BlobStore, tmp_path: Path) -> None:
    missing = keys.checkpoint("nojob", "weights.h5")
    with pytest.raises(StorageError, match="not found"):
        store.size(missing)
    dst = tmp_path / "never.bin"
    with pytest.raises(StorageError, match="not found"):
        store.get_file(missing, str(dst))
    assert not dst.exists()
    assert store.list(keys.checkpoint_prefix("nojob")) == []


def test_delete_removes_one_object_and_ignores_a_missing_one(store: BlobStore) -> None:
    kept, gone = keys.output("job1", 0), keys.output("job1", 1)
    store.put(kept, b"a")
    store.put(gone, b"b")
    store.delete(gone)
    store.delete(gone)
    assert not store.exists(gone)
    assert store.list(keys.outputs_prefix("job1")) == [kept]


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
    assert store.fs.find(store.root) == [f"{store.root}/{key}"]  # no temporary debris either


def test_readers_never_see_an_unfinished_write(store: BlobStore) -> None:
    key = keys.output("job9", 0)
    with store.open_write(key) as fh:
        fh.write(b"png bytes")
        assert not store.exists(key)
        assert store.list(keys.outputs_prefix("job9")) == []
    assert store.get(key) == b"png bytes"


def test_another_instance_sees_writes_and_deletes_at_once(store: BlobStore) -> None:
    """The bot and a worker are different processes, each with its own filesystem object;
    neither may answer from a listing it cached before the other wrote."""
    other = BlobStore(store.url, skip_instance_cache=True)  # what another process builds
    assert other.fs is not store.fs
    first, second = keys.photo("job5", 0, "a" * 64), keys.photo("job5", 1, "b" * 64)
    store.put(first, b"1")
    assert other.list(keys.photos_prefix("job5")) == [first]
    store.put(second, b"2")
    assert other.exists(second)
    assert other.list(keys.photos_prefix("job5")) == [first, second]
    store.delete(first)
    assert not other.exists(first)
    assert other.list(keys.photos_prefix("job5")) == [second]


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
    assert store.size(key) == src.stat().st_size


@pytest.mark.skipif(not HAS_S3, reason="s3fs and moto are not installed")
def test_a_missing_bucket_is_a_storage_error_naming_it(s3_env: str) -> None:
    bucket = f"dreambot-absent-{uuid.uuid4().hex[:12]}"
    store = BlobStore(f"s3://{bucket}/blobs")
    with pytest.raises(StorageError, match="bucket does not exist"):
        store.put(keys.output("j", 0), b"x")
    with pytest.raises(StorageError, match="bucket does not exist"):
        store.put_file(keys.output("j", 1), __file__)


@pytest.mark.skipif(not HAS_S3, reason="s3fs and moto are not installed")
def test_a_failed_large_s3_upload_is_aborted_not_left_pending(s3_bucket: str) -> None:
    store = BlobStore(f"s3://{s3_bucket}/blobs", default_block_size=5 << 20)  # S3's least part

    def pending() -> list[object]:
        uploads = store.fs.call_s3("list_multipart_uploads", Bucket=s3_bucket)
        return list(uploads.get("Uploads", []))

    key = keys.checkpoint("job1", "weights.h5")
    with pytest.raises(RuntimeError), store.open_write(key) as fh:
        fh.write(b"\x01" * (6 << 20))  # more than one part: the multipart upload has begun
        assert len(pending()) == 1 and not store.exists(key)
        raise RuntimeError("worker killed")
    assert pending() == [] and not store.exists(key)
    with store.open_write(key) as fh:
        for _ in range(11):
            fh.write(b"\x02" * (1 << 20))
    assert pending() == [] and store.size(key) == 11 << 20


def test_s3_without_s3fs_is_a_config_error_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # what `import s3fs` meets when absent
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[s3\]'"):
        BlobStore("s3://bucket/prefix")


def test_importing_the_store_does_not_import_s3fs() -> None:
    code = "import sys, storage.blobs; assert 's3fs' not in sys.modules, 's3fs imported'"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
