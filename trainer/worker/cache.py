"""Personal models for generation: an LRU over the one loaded base model.

The base model stays loaded. A personal model is cached under ``(model id, sha256 of its
weights)``, so a retrained model under the same id is a different entry:

- LoRA models keep only their factors (a few MB). Using one merges its factors into the shared
  base's attention kernels (:func:`trainer.lora.apply_lora`) after saving those kernels;
  switching to another model (or to the base) first assigns the saved kernels back, so the base
  returns bit for bit and no user ever draws with another user's weights.
- Full models keep their own UNet and sampler (built by :func:`trainer.export.load_model`),
  swapped in whole; they share the base's tokenizer, text encoder and decoder.
- A tiny model trained on another pretrained tiny base than the worker's (one fitted by an older
  version of the code) keeps its own copy of that base, read from ``bases_dir``, and its own
  sampler; when that base is gone it is refused at once with a plain message
  (:class:`~trainer.errors.BaseNotFound`).

A model missing from the blob store is fetched from its Hub repo when Hub hosting is on.

Everything here runs on the worker's TensorFlow thread, one request at a time, which is what
makes apply / generate / remove safe without locks.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.blobs import BlobStore, keys
from storage.errors import StorageError, UserFacingError
from trainer.errors import ModelFormatError
from trainer.export import METADATA_FILE, TEXT_PREFIX, ModelMetadata, load_model, read_metadata
from trainer.lora import apply_lora, attention_projections
from trainer.presets import Preset, is_pretrained_tiny
from trainer.sampler import Sampler
from trainer.worker.hub import HubHost

__all__ = ["CacheStats", "ModelCache", "ModelNotFound"]

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ModelNotFound(UserFacingError):
    """The model a request names is not in the blob store (deleted, or never finished)."""

    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"Model {model_id} was not found: it may have been deleted. Train it again.",
            code="unknown_model",
        )


@dataclass
class _Entry:
    meta: ModelMetadata
    unet_lora: dict[str, np.ndarray] | None = None
    text_lora: dict[str, np.ndarray] | None = None
    sampler: Sampler | None = None  # full models only


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    swaps: int = 0
    evictions: int = 0
    last_swap_s: float = 0.0


class ModelCache:
    """Which weights the shared base carries, and the LRU of loaded personal models."""

    def __init__(
        self,
        base: Preset,
        base_sampler: Sampler,
        store: BlobStore,
        capacity: int = 8,
        *,
        sampler_options: dict[str, Any] | None = None,
        hub: HubHost | None = None,
        bases_dir: Path | None = None,
        bpe_path: Path | None = None,
    ) -> None:
        self.base = base
        self.hub = hub
        self.bases_dir = bases_dir  # where models of other pretrained tiny bases find theirs
        self.bpe_path = bpe_path
        self.base_sampler = base_sampler
        self.store = store
        self.capacity = capacity
        self.sampler_options = sampler_options or {}
        self.stats = CacheStats()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._active: Key | None = None
        self._saved: list[tuple[Any, np.ndarray]] = []
        self._text_changed = False

    @property
    def active(self) -> Key | None:
        """The LoRA model merged into the base now (None: the base is clean)."""
        return self._active

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    # -- the base ----------------------------------------------------------------------------

    def use_base(self) -> None:
        """Put the base's own kernels back (a no-op when no LoRA is merged)."""
        if self._active is None:
            return
        for variable, original in self._saved:
            variable.assign(original)
        self._saved = []
        self._active = None
        if self._text_changed:
            self._forget_prompts()
            self._text_changed = False

    def _merge(self, model: Any, factors: dict[str, np.ndarray]) -> None:
        layers = dict(attention_projections(model))
        touched = sorted({k.rsplit(".", 1)[0] for k in factors})
        saved = [
            (layers[k]._kernel, np.array(layers[k]._kernel.numpy())) for k in touched if k in layers
        ]
        apply_lora(model, factors)  # checks every factor first; on a mismatch nothing changed
        self._saved.extend(saved)

    def _activate(self, key: Key, entry: _Entry) -> None:
        if self._active == key:
            return
        started = time.perf_counter()
        self.use_base()
        try:
            if entry.unet_lora:
                self._merge(self.base.diffusion_model, entry.unet_lora)
            self._active = key
            if entry.text_lora:
                self._merge(self.base.text_encoder, entry.text_lora)
                self._text_changed = True
                self._forget_prompts()
        except BaseException:
            self._active = key  # so use_base restores whatever was merged before the failure
            self.use_base()
            raise
        self.stats.swaps += 1
        self.stats.last_swap_s = time.perf_counter() - started

    def _forget_prompts(self) -> None:
        """Cached prompt encodings were made by the text encoder as it was; drop them."""
        for sampler in [self.base_sampler, *(e.sampler for e in self._entries.values())]:
            if sampler is not None:
                sampler.clear_prompt_cache()

    # -- personal models ---------------------------------------------------------------------

    def sampler_for(self, model_id: str | None) -> Sampler:
        """The sampler that draws with ``model_id`` (None: the base), ready to use now."""
        if model_id is None:
            self.use_base()
            return self.base_sampler
        with tempfile.TemporaryDirectory(prefix="dreambot-model-") as tmp:
            folder = Path(tmp)
            meta, from_hub = self._fetch_metadata(model_id, folder)
            key = (model_id, meta.sha256)
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                entry = self._load(model_id, meta, folder, from_hub)
                self._insert(key, entry)
            else:
                self.stats.hits += 1
                self._entries.move_to_end(key)
        if entry.sampler is not None:
            self.use_base()
            return entry.sampler
        self._activate(key, entry)
        return self.base_sampler

    def _fetch_metadata(self, model_id: str, folder: Path) -> tuple[ModelMetadata, bool]:
        """The model's metadata, and whether it (with its weights) came from the Hub."""
        from_hub = False
        try:
            (folder / METADATA_FILE).write_bytes(
                self.store.get(keys.model(model_id, METADATA_FILE))
            )
            meta = read_metadata(folder)
        except StorageError as exc:
            if self.hub is None:
                raise ModelNotFound(model_id) from exc
            try:
                meta = self.hub.fetch(self.hub.repo_id(model_id), folder)
            except OSError:
                raise  # the network: worth a retry
            except Exception as hub_exc:
                raise ModelNotFound(model_id) from hub_exc
            from_hub = True
        base = self.base
        if not self._own_base(meta) and not self._other_tiny_base(meta):
            raise ModelFormatError(
                f"model was trained on {meta.preset} ({meta.base_weights_id}, "
                f"{meta.resolution}px); this worker runs {base.name} ({base.weights_id}, "
                f"{base.resolution}px)"
            )
        return meta, from_hub

    def _own_base(self, meta: ModelMetadata) -> bool:
        base = self.base
        return (base.name, base.resolution, base.weights_id) == (
            meta.preset,
            meta.resolution,
            meta.base_weights_id,
        )

    def _other_tiny_base(self, meta: ModelMetadata) -> bool:
        """Whether the model belongs on a pretrained tiny base of its own (from bases_dir)."""
        return (
            self.bases_dir is not None
            and (self.base.name, self.base.resolution) == (meta.preset, meta.resolution)
            and meta.preset == "tiny"
            and is_pretrained_tiny(meta.base_weights_id)
        )

    def _load(self, model_id: str, meta: ModelMetadata, folder: Path, from_hub: bool) -> _Entry:
        try:
            if from_hub:
                data = (folder / meta.weights_file).read_bytes()
            else:
                data = self.store.get(keys.model(model_id, meta.weights_file))
        except (StorageError, FileNotFoundError) as exc:
            raise ModelNotFound(model_id) from exc
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise ModelFormatError(
                f"{meta.weights_file} of model {model_id} does not match its {METADATA_FILE}"
            )
        if not self._own_base(meta):  # another tiny base: a copy of it, read from bases_dir
            (folder / meta.weights_file).write_bytes(data)
            loaded = load_model(folder, bpe_path=self.bpe_path, bases_dir=self.bases_dir)
            return _Entry(meta, sampler=Sampler.from_components(loaded, **self.sampler_options))
        if meta.method == "full":
            (folder / meta.weights_file).write_bytes(data)
            loaded = load_model(folder, base=self.base)
            sampler = Sampler.from_components(loaded, **self.sampler_options)
            return _Entry(meta, sampler=sampler)
        with np.load(io.BytesIO(data)) as arrays:
            factors = {k: arrays[k] for k in arrays.files}
        text = {k[len(TEXT_PREFIX) :]: v for k, v in factors.items() if k.startswith(TEXT_PREFIX)}
        unet = {k: v for k, v in factors.items() if not k.startswith(TEXT_PREFIX)}
        return _Entry(meta, unet_lora=unet, text_lora=text or None)

    def _insert(self, key: Key, entry: _Entry) -> None:
        self._entries[key] = entry
        while len(self._entries) > self.capacity:
            old_key, _old = self._entries.popitem(last=False)
            if old_key == self._active:
                self.use_base()
            self.stats.evictions += 1
            log.info("model cache: evicted %s", old_key[0])
