"""The generation model cache: two users' models interleaved never see each other's weights,
the base comes back bit for bit, full models are swapped in whole; and Hub hosting at the
``huggingface_hub`` API boundary (no network here)."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.queue import JobQueue
from storage.blobs import BlobStore
from storage.jobs import GenerateResult
from tests.trainer.workers import (
    generate_spec,
    job_queue,
    model_dir,
    new_id,
    queue_url,
    upload_full_model,
    upload_lora_model,
    worker_group,
    worker_runtime,
    worker_store,
)

pytestmark = pytest.mark.queue

__all__ = ["job_queue", "queue_url", "worker_group", "worker_runtime", "worker_store"]


_SEP = b"--next-png--"


def _pngs(joined: bytes) -> list[bytes]:
    return joined.split(_SEP)


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _reference(runtime: Any, folder: Path) -> np.ndarray:
    """What `dreambot imagine --model` would draw: the model loaded into its own copy."""
    from trainer.export import load_model
    from trainer.sampler import Sampler

    runtime.cache.use_base()
    loaded = load_model(folder, base=runtime.base)
    sampler = Sampler.from_components(loaded, jit_compile=False)
    return sampler.generate("a photo of sks dog", seeds=[7, 8], steps=4)


@pytest.mark.slow  # four sampler traces: about a minute here
async def test_two_users_interleaved_never_see_each_others_weights(
    worker_group: Any,
    job_queue: JobQueue,
    worker_runtime: Any,
    worker_store: BlobStore,
    tmp_path: Path,
) -> None:
    rt = worker_runtime
    alice, bob, carol = new_id("alice"), new_id("bob"), new_id("carol")
    upload_lora_model(worker_store, rt.base, alice, seed=1)
    upload_lora_model(worker_store, rt.base, bob, seed=2)
    base_weights = await rt.tf.submit(
        lambda: [np.array(w) for w in rt.base.diffusion_model.get_weights()]
    )
    upload_full_model(worker_store, base_weights, rt.base, carol)

    order = [alice, bob, None, alice, carol, bob, alice, None]
    ids = [new_id("imagine") for _ in order]
    for job_id, model_id in zip(ids, order, strict=True):  # all queued at once: interleaved
        assert await job_queue.enqueue(generate_spec(job_id, model_id=model_id))
    images: dict[str | None, list[bytes]] = {}
    for job_id, model_id in zip(ids, order, strict=True):
        result = await job_queue.result(job_id, timeout=120)
        assert isinstance(result, GenerateResult)
        pngs = [worker_store.get(key) for key in result.image_keys]
        images.setdefault(model_id, []).append(_SEP.join(pngs))

    for model_id, runs in images.items():
        assert len(set(runs)) == 1, f"{model_id} drew different images on different requests"
    drawn = {model_id: runs[0] for model_id, runs in images.items()}
    assert len(set(drawn.values())) == 4, "two models drew the same images"

    for model_id in (alice, carol):  # a LoRA model and a full one draw what they should
        folder = model_dir(worker_store, model_id, tmp_path / model_id)
        ref = await rt.tf.submit(lambda folder=folder: _reference(rt, folder))
        got = np.stack([_decode(png) for png in _pngs(images[model_id][0])])
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, model_id
    after = await rt.tf.submit(
        lambda: (rt.cache.use_base(), [np.array(w) for w in rt.base.diffusion_model.get_weights()])[
            1
        ]
    )
    for before, now in zip(base_weights, after, strict=True):
        np.testing.assert_array_equal(before, now)  # the base came back bit for bit
    assert rt.cache.stats.evictions >= 1  # three models through a cache of two


class FakeHubApi:
    """``huggingface_hub.HfApi``'s three calls, on a dict of repos (there is no network)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos: dict[str, dict[str, Any]] = {}

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.repos.setdefault(repo_id, {"options": kwargs, "files": {}})
        return repo_id

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: Any) -> None:
        files = self.repos[repo_id]["files"]
        for path in Path(folder_path).iterdir():
            files[path.name] = path.read_bytes()

    def hf_hub_download(self, repo_id: str, filename: str, *, local_dir: str, **kwargs: Any) -> str:
        if repo_id not in self.repos or filename not in self.repos[repo_id]["files"]:
            raise FileNotFoundError(f"{repo_id}/{filename}")  # like EntryNotFoundError
        out = Path(local_dir) / filename
        out.write_bytes(self.repos[repo_id]["files"][filename])
        return str(out)


def test_hub_push_names_the_repo_from_the_model_id_and_fetch_loads_it_back(
    worker_runtime: Any, worker_store: BlobStore, tmp_path: Path
) -> None:
    from storage.errors import ConfigError
    from trainer.worker.hub import HubHost

    model_id = new_id("hosted")
    upload_lora_model(worker_store, worker_runtime.base, model_id, seed=5)
    folder = model_dir(worker_store, model_id, tmp_path / "model")
    api = FakeHubApi(tmp_path)
    host = HubHost(api, "my-org")
    repo = host.push(folder, model_id, now=dt.datetime(2025, 3, 1, tzinfo=dt.UTC))
    assert repo == f"my-org/dreambot-{model_id}"
    assert api.repos[repo]["options"]["private"] is True
    files = api.repos[repo]["files"]
    assert set(files) == {"model.json", "lora.npz", "README.md"}
    card = files["README.md"].decode()
    for fact in ("tiny", "`sks`", "`dog`", "method: lora", "steps: 1", "2025-03-01", "OpenRAIL"):
        assert fact in card, fact
    with pytest.raises(ConfigError):
        host.repo_id("../../etc")

    meta = host.fetch(repo, tmp_path / "back")
    assert (tmp_path / "back" / "lora.npz").read_bytes() == (folder / "lora.npz").read_bytes()
    assert meta.identifier == "sks"

    # A model missing from the blob store is loaded from its repo by the same cache path.
    worker_store.delete_prefix(f"models/{model_id}/")
    cache = worker_runtime.cache
    cache.hub = host
    try:
        sampler = worker_runtime.tf.submit_future(lambda: cache.sampler_for(model_id)).result(60)
        assert sampler is worker_runtime.sampler and cache.active == (model_id, meta.sha256)
    finally:
        worker_runtime.tf.submit_future(cache.use_base).result(60)
        cache.hub = None
    shutil.rmtree(tmp_path / "back")
