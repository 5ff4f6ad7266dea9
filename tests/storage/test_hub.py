"""The bot's Hub host: links and deletion through an injected stand-in for ``HfApi`` (no network
here), and the real ``HfApi`` built without making a request."""

from __future__ import annotations

from typing import Any

import pytest

from storage.errors import ConfigError, StorageError
from storage.hub import HubModelHost


class StandInApi:
    """``HfApi.delete_repo`` as the Hub answers it: missing repos are an error unless
    ``missing_ok``."""

    def __init__(self, *repos: str) -> None:
        self.repos = set(repos)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def delete_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append((repo_id, kwargs))
        if repo_id not in self.repos and not kwargs.get("missing_ok"):
            raise FileNotFoundError(repo_id)
        self.repos.discard(repo_id)


def test_url_links_to_the_model_page() -> None:
    host = HubModelHost(StandInApi())
    assert host.url("org/dreambot-m1") == "https://huggingface.co/org/dreambot-m1"
    mirror = HubModelHost(StandInApi(), endpoint="https://hub.example.org/")
    assert mirror.url("org/dreambot-m1") == "https://hub.example.org/org/dreambot-m1"


def test_delete_removes_the_model_repo_and_a_second_delete_is_fine() -> None:
    api = StandInApi("org/dreambot-m1", "org/dreambot-m2")
    host = HubModelHost(api)
    host.delete("org/dreambot-m1")
    assert api.repos == {"org/dreambot-m2"}
    host.delete("org/dreambot-m1")  # already gone: /forget may run twice
    assert api.calls[0] == ("org/dreambot-m1", {"repo_type": "model", "missing_ok": True})


@pytest.mark.parametrize(
    "repo", ["dreambot-m1", "org/../other", "org/name/extra", "/org/name", "org/na me", ""]
)
def test_only_plain_repo_ids_are_linked_or_deleted(repo: str) -> None:
    api = StandInApi(repo)
    host = HubModelHost(api)
    with pytest.raises(StorageError, match="not a Hub model repo id"):
        host.delete(repo)
    with pytest.raises(StorageError):
        host.url(repo)
    assert api.calls == []


def test_connect_builds_a_real_hf_api_without_a_request() -> None:
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import HfApi

    host = HubModelHost.connect("hf_test_token", endpoint="https://hub.example.org")
    assert isinstance(host.api, HfApi)
    assert host.api.endpoint == "https://hub.example.org"
    assert host.api.token == "hf_test_token"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        HubModelHost.connect("  ")
    with pytest.raises(ConfigError, match="http"):
        HubModelHost(StandInApi(), endpoint="huggingface.co")
