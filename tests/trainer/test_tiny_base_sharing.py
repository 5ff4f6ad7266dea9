"""The tiny base shared: named by its fit, fitted by one process at a time, and loaded for the
models trained on it (or refused at once when it is gone)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainer.tiny_base_support import (
    RID,
    current_rid,
    leftovers,
    model_folder,
    no_fitting,
    old_base,
    same,
    stand_in_fit,
    stand_in_weights,
)


def test_the_weights_id_names_the_fit_not_only_the_recipe(tmp_path: Path) -> None:
    """Two fits of one recipe (fitted again, or on another machine) never share an id."""
    from trainer.presets.tiny_base import MANIFEST_FILE, named_base, read_base, write_base

    first, second = tmp_path / "a" / f"tiny-{RID}", tmp_path / "b" / f"tiny-{RID}"
    write_base(first, RID, stand_in_weights(0), {})
    write_base(second, RID, stand_in_weights(1), {})
    a, b = read_base(first, RID), read_base(second, RID)
    assert a is not None and b is not None and a.recipe_id == b.recipe_id == RID
    assert a.weights_id(64) != b.weights_id(64)
    sha = json.loads((first / MANIFEST_FILE).read_text())["sha256"]
    assert a.weights_id(64) == f"tiny-base-{RID}-{sha[:12]}-r64"
    assert named_base(a.weights_id(128)) == (RID, sha[:12])


def test_two_processes_needing_the_base_fit_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second waits for the first's fit, then reads its base."""
    from trainer.presets.tiny_base import load_tiny_base
    from trainer.presets.tokenizer import tiny_bpe_path

    fits = stand_in_fit(monkeypatch, seconds=0.5)
    bases, bpe = tmp_path / "bases", tiny_bpe_path()
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(load_tiny_base(bases, bpe_path=bpe)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(fits) == 1, "both fitted the base"
    assert len(got) == 2 and got[0].sha256 == got[1].sha256
    assert (tmp_path / "bases.lock").exists() and leftovers(bases) == []


_LIVE_WRITER = """
import fcntl, os, sys, time
lock, staged, tmp, final = sys.argv[1:]
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.rename(staged, tmp)  # a fit in progress: its temporary folder
print("locked", flush=True)
time.sleep(1.5)
os.rename(tmp, final)  # published; the lock goes when this process ends
"""


def test_a_loader_waits_for_another_process_fitting_and_leaves_its_folder_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.presets.tiny_base import load_tiny_base, write_base
    from trainer.presets.tiny_base.cache import lock_path
    from trainer.presets.tokenizer import tiny_bpe_path

    no_fitting(monkeypatch)
    rid, bases = current_rid(), tmp_path / "bases"
    bases.mkdir()
    staged = tmp_path / "staged"
    write_base(staged, rid, stand_in_weights(5), {})
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LIVE_WRITER,
            str(lock_path(bases)),
            str(staged),
            str(bases / f".tiny-{rid}.live.tmp"),
            str(bases / f"tiny-{rid}"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        started = time.monotonic()
        base = load_tiny_base(bases, bpe_path=tiny_bpe_path())
        waited = time.monotonic() - started
    finally:
        writer.wait(30)
    assert writer.returncode == 0, "the live writer's temporary folder was taken from it"
    assert same(base, stand_in_weights(5)) and waited > 0.5
    assert leftovers(bases) == []


def test_a_fit_killed_half_way_leaves_nothing_behind_the_next_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.presets.tiny_base import load_tiny_base
    from trainer.presets.tokenizer import tiny_bpe_path

    fits = stand_in_fit(monkeypatch)
    bases = tmp_path / "bases"
    for name in (f".tiny-{RID}.k1ll3d.tmp", f".tiny-{RID}.gone.old"):
        (bases / name).mkdir(parents=True)
        (bases / name / "base.npz").write_bytes(b"half a file")
    base = load_tiny_base(bases, bpe_path=tiny_bpe_path())
    assert len(fits) == 1 and same(base, stand_in_weights(1))
    assert leftovers(bases) == []


def test_a_model_whose_base_is_gone_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a code change (a new recipe id), a model of the old base is refused with a plain
    message before anything is fitted or built."""
    from trainer.errors import BaseNotFound
    from trainer.export import load_model
    from trainer.presets.tiny_base import write_base

    no_fitting(monkeypatch)
    bases = tmp_path / "bases"
    model = model_folder(tmp_path / "model", f"tiny-base-{RID}-cdef01234567-r64", {})
    with pytest.raises(BaseNotFound) as gone:
        load_model(model, bases_dir=bases)
    message = str(gone.value)
    assert f"tiny-{RID}" in message and str(bases) in message
    assert "changed" in message and f"tiny-{current_rid()}" in message
    assert "Train the model again" in message and gone.value.code == "base_not_found"

    write_base(bases / f"tiny-{RID}", RID, stand_in_weights(0), {})  # that recipe, fitted once more
    with pytest.raises(BaseNotFound, match="another fit"):
        load_model(model, bases_dir=bases)

    old = model_folder(tmp_path / "old", f"tiny-base-{RID}-r64", {})
    with pytest.raises(BaseNotFound, match="older version"):
        load_model(old, bases_dir=bases)


def test_a_model_of_an_older_base_loads_that_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_preset: Any
) -> None:
    """A model of an older tiny base that is still in bases_dir loads it, not this code's: in
    ``dreambot imagine`` (load_model), and in a worker, from a copy of its own that leaves the
    worker's base as it was; and the worker refuses a model whose base is gone."""
    from storage.blobs import BlobStore, keys
    from trainer.errors import BaseNotFound
    from trainer.export import load_model
    from trainer.sampler import Sampler
    from trainer.worker.cache import ModelCache

    no_fitting(monkeypatch)
    bases = tmp_path / "bases"
    old = old_base(bases, tiny_preset, RID)
    loaded = load_model(model_folder(tmp_path / "model", old.weights_id(64), {}), bases_dir=bases)
    assert loaded.weights_id == old.weights_id(64)
    for got, want in zip(
        loaded.diffusion_model.get_weights(), old.weights["diffusion_model"], strict=True
    ):
        np.testing.assert_array_equal(got, want)

    store = BlobStore((tmp_path / "blobs").as_uri())
    for model_id, base_id in [
        ("kept", old.weights_id(64)),
        ("gone", f"tiny-base-{'f' * 12}-{'e' * 12}-r64"),
    ]:
        folder = model_folder(tmp_path / model_id, base_id, {})
        for path in folder.iterdir():
            store.put(keys.model(model_id, path.name), path.read_bytes())
    options = {"jit_compile": False}
    own = Sampler.from_components(tiny_preset, **options)
    cache = ModelCache(tiny_preset, own, store, 2, sampler_options=options, bases_dir=bases)
    before = [np.array(w) for w in tiny_preset.decoder.get_weights()]

    sampler = cache.sampler_for("kept")
    assert sampler is not own and cache.active is None
    for got, want in zip(sampler.decoder.get_weights(), old.weights["decoder"], strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(tiny_preset.decoder.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(BaseNotFound, match=f"tiny-{'f' * 12}"):
        cache.sampler_for("gone")
