"""The bot's door to models hosted on the Hugging Face Hub: a link for ``/models export`` and
deletion for ``/forget`` (the workers push; see the trainer's hub module).

Everything goes through one ``huggingface_hub.HfApi``, imported only when :meth:`connect` builds
one, so the bot runs without ``huggingface_hub`` when hosting is off. Tests inject a stand-in
with the same method, since there is no network here.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol, cast

from storage.errors import ConfigError, StorageError

__all__ = ["HUB_ENDPOINT", "HubApi", "HubModelHost"]

log = logging.getLogger(__name__)

HUB_ENDPOINT = "https://huggingface.co"
# "<user or organisation>/<name>": the only repo ids this host builds links to or deletes.
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class HubApi(Protocol):
    """The part of ``huggingface_hub.HfApi`` used here."""

    def delete_repo(self, repo_id: str, **kwargs: Any) -> Any: ...


def _checked(repo: str) -> str:
    if not _REPO.match(repo) or ".." in repo:
        raise StorageError(f"{repo!r} is not a Hub model repo id (namespace/name)")
    return repo


class HubModelHost:
    """Links to and deletes hosted model repos (the bot's ``ModelHost``)."""

    def __init__(self, api: HubApi, endpoint: str = HUB_ENDPOINT) -> None:
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigError(f"the Hub endpoint {endpoint!r} must be an http(s) URL")
        self.api = api
        self.endpoint = endpoint.rstrip("/")

    @classmethod
    def connect(cls, token: str, endpoint: str = HUB_ENDPOINT) -> HubModelHost:
        """A host over a real ``HfApi`` with this token (no request is made until a call)."""
        if not token.strip():
            raise ConfigError("HF_TOKEN is empty: the bot needs it to delete hosted models")
        try:
            from huggingface_hub import HfApi
        except ImportError as exc:
            raise ConfigError(
                "Hub hosting needs the huggingface_hub package: pip install huggingface_hub"
            ) from exc
        return cls(cast(HubApi, HfApi(endpoint=endpoint, token=token)), endpoint)

    def url(self, repo: str) -> str:
        """The page of a hosted model (members need access to the private repo to open it)."""
        return f"{self.endpoint}/{_checked(repo)}"

    def delete(self, repo: str) -> None:
        """Delete a hosted model repo; deleting one that is already gone is not an error, so a
        ``/forget`` that stopped half-way can simply run again."""
        self.api.delete_repo(_checked(repo), repo_type="model", missing_ok=True)
        log.info("deleted Hub repo %s", repo)
