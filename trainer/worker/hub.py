"""Optional Hugging Face Hub hosting of finished models (``HF_TOKEN`` + ``HF_NAMESPACE``).

A finished model is pushed to a private repo named from its model id only (never from anything
a user typed): ``<namespace>/dreambot-<model id>``, with a model card. A model can be loaded back
by repo id. Everything goes through one ``huggingface_hub.HfApi``; tests inject a stand-in with
the same three methods, since there is no network here.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol, cast

from storage.errors import ConfigError
from trainer.config import TrainerSettings
from trainer.export import METADATA_FILE, ModelMetadata, read_metadata

__all__ = ["HubApi", "HubHost", "model_card"]

log = logging.getLogger(__name__)

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

LICENSE_NOTE = (
    "Fine-tuned from Stable Diffusion v1 weights, which are released under the CreativeML "
    "OpenRAIL-M license; its use restrictions apply to this model and its outputs."
)


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` used here."""

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...

    def upload_folder(self, **kwargs: Any) -> Any: ...

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: Any) -> str: ...


def model_card(meta: ModelMetadata, model_id: str, when: dt.datetime) -> str:
    """README.md of a hosted model: what it is, how it was made, and the license note."""
    rank = f" (rank {meta.rank})" if meta.rank else ""
    return "\n".join(
        [
            "---",
            "license: creativeml-openrail-m",
            "tags: [dreambooth, stable-diffusion, dreambot]",
            "---",
            f"# dreambot model {model_id}",
            "",
            f"- base: {meta.preset} ({meta.base_weights_id}, {meta.resolution}px)",
            f"- identifier: `{meta.identifier}`",
            f"- class: `{meta.class_name}`",
            f"- instance prompt: `{meta.instance_prompt}`",
            f"- method: {meta.method}{rank}",
            f"- steps: {meta.steps}",
            f"- date: {when.date().isoformat()}",
            "",
            "Load it with dreambot (`model.json` says which base it needs).",
            "",
            f"License: {LICENSE_NOTE}",
            "",
        ]
    )


class HubHost:
    """Pushes model folders to private Hub repos and fetches them back."""

    def __init__(self, api: HubApi, namespace: str) -> None:
        if not _NAMESPACE.match(namespace):
            raise ConfigError(f"HF_NAMESPACE {namespace!r} is not a Hub user or organisation name")
        self.api = api
        self.namespace = namespace

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> HubHost | None:
        """A host when both HF_TOKEN and HF_NAMESPACE are set; None (no hosting) otherwise."""
        if settings.hf_token is None or not settings.hf_namespace:
            return None
        from huggingface_hub import HfApi

        api = cast(HubApi, HfApi(token=settings.hf_token.get_secret_value()))
        return cls(api, settings.hf_namespace)

    def repo_id(self, model_id: str) -> str:
        if not _MODEL_ID.match(model_id) or ".." in model_id:
            raise ConfigError(f"model id {model_id!r} cannot name a Hub repo")
        return f"{self.namespace}/dreambot-{model_id}"

    def push(self, model_dir: Path | str, model_id: str, *, now: dt.datetime | None = None) -> str:
        """Upload ``model.json``, the weights and a model card; returns the repo id."""
        meta = read_metadata(model_dir)
        repo = self.repo_id(model_id)
        when = now or dt.datetime.now(dt.UTC)
        with tempfile.TemporaryDirectory(prefix="dreambot-hub-") as tmp:
            folder = Path(tmp)
            for name in (meta.weights_file, METADATA_FILE):
                shutil.copyfile(Path(model_dir) / name, folder / name)
            (folder / "README.md").write_text(model_card(meta, model_id, when), encoding="utf-8")
            self.api.create_repo(repo, repo_type="model", private=True, exist_ok=True)
            self.api.upload_folder(
                repo_id=repo,
                repo_type="model",
                folder_path=str(folder),
                commit_message=f"dreambot model {model_id}",
            )
        log.info("pushed model %s to %s", model_id, repo)
        return repo

    def fetch(self, repo_id: str, dest: Path | str) -> ModelMetadata:
        """Download a hosted model folder into ``dest`` (``model.json`` first, then the weights
        it names) and return its metadata."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        self.api.hf_hub_download(repo_id, METADATA_FILE, repo_type="model", local_dir=str(dest))
        meta = read_metadata(dest)
        self.api.hf_hub_download(repo_id, meta.weights_file, repo_type="model", local_dir=str(dest))
        return meta
