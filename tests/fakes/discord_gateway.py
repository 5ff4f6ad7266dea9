"""A fake of Discord that speaks: gateway (HELLO, READY, GUILD_CREATE, heartbeats, dispatches)
and the REST routes a running bot uses (command sync, interaction callbacks, webhooks, channel
messages, JSON or multipart), on 127.0.0.1, for the socket-level smoke test of the real bot
process. Only Discord's servers are faked: they cannot be reached from here.

Every request is recorded with its JSON body and, for multipart, each file part's name, content
type and bytes, so a test can see an image arrive exactly as Discord would receive it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.discord_http import APP, USER, FakeDiscord

__all__ = [
    "CHANNEL_ID",
    "GUILD_ID",
    "MEMBER",
    "FakeGateway",
    "Request",
    "Upload",
    "member",
]

GUILD_ID = "300000000000000003"
CHANNEL_ID = "300000000000000004"
MEMBER_USER = {
    "id": "400000000000000005",
    "username": "alice",
    "discriminator": "0",
    "global_name": "Alice",
    "avatar": None,
}
NOW = "2026-11-28T00:00:00.000000+00:00"
# Send messages, attach files, embed links, use application commands, and the rest of a
# member's defaults (no Manage Server).
MEMBER_PERMISSIONS = "2248473465835073"
MEMBER = {
    "user": MEMBER_USER,
    "roles": [],
    "joined_at": NOW,
    "deaf": False,
    "mute": False,
    "flags": 0,
    "permissions": MEMBER_PERMISSIONS,
}


def member(user_id: int, name: str) -> dict[str, Any]:
    """Another member of the guild (not in GUILD_CREATE: interactions carry their member)."""
    user = {**MEMBER_USER, "id": str(user_id), "username": name, "global_name": name}
    return {**MEMBER, "user": user}


GUILD = {
    "id": GUILD_ID,
    "name": "Dreams",
    "icon": None,
    "owner_id": MEMBER_USER["id"],
    "roles": [
        {
            "id": GUILD_ID,
            "name": "@everyone",
            "permissions": MEMBER_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
    ],
    "channels": [
        {
            "id": CHANNEL_ID,
            "type": 0,
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "guild_id": GUILD_ID,
        }
    ],
    "members": [{**MEMBER, "user": USER}, MEMBER],
    "member_count": 2,
    "large": False,
    "unavailable": False,
    "features": [],
    "emojis": [],
    "stickers": [],
    "threads": [],
    "voice_states": [],
    "presences": [],
    "premium_tier": 0,
    "preferred_locale": "en-US",
    "verification_level": 0,
    "default_message_notifications": 0,
    "explicit_content_filter": 0,
    "mfa_level": 0,
    "system_channel_flags": 0,
    "joined_at": NOW,
}


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    json: Any
    uploads: tuple[Upload, ...] = ()
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def multipart(self) -> bool:
        return bool(self.uploads)


@dataclass
class FakeGateway(FakeDiscord):
    requests: list[Request] = field(default_factory=list)
    identified: asyncio.Event = field(default_factory=asyncio.Event)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    commands: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _ws: web.WebSocketResponse | None = None
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(500000000000000000))

    def new_id(self) -> str:
        return str(next(self._ids))

    # -- gateway -----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:  # type: ignore[override]
        self.seen.append(f"WS {request.path}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.gateway_asked.set()
        self._ws = ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}})
        async for message in ws:
            payload = json.loads(message.data)
            if payload["op"] == 1:  # heartbeat
                # A moment's delay, as over a network: an instant ACK can arrive before
                # discord.py notes the send, and it then warns that it "can't keep up".
                await asyncio.sleep(0.05)
                await ws.send_json({"op": 11})
            elif payload["op"] == 2:  # identify
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": USER,
                        "guilds": [{"id": GUILD_ID, "unavailable": True}],
                        "session_id": "fake-session",
                        "resume_gateway_url": self.gateway_url,
                        "application": {"id": APP["id"], "flags": 0},
                    },
                )
                await self.dispatch("GUILD_CREATE", GUILD)
                self.identified.set()
        return ws

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        assert self._ws is not None, "the bot has not connected"
        await self._ws.send_json({"op": 0, "t": event, "s": next(self._seq), "d": data})

    async def slash(self, name: str, member: dict[str, Any] | None = None, **options: Any) -> str:
        """Send INTERACTION_CREATE for ``/name`` from ``member`` (alice by default); returns
        the interaction's token (its callback's path contains it)."""
        command = next(c for c in self.commands if c["name"] == name)
        token = f"token-{self.new_id()}"
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": self.new_id(),
                "application_id": APP["id"],
                "type": 2,
                "token": token,
                "version": 1,
                "guild_id": GUILD_ID,
                "channel_id": CHANNEL_ID,
                "channel": GUILD["channels"][0],  # type: ignore[index]
                "member": member or MEMBER,
                "app_permissions": MEMBER_PERMISSIONS,
                "locale": "en-US",
                "guild_locale": "en-US",
                "entitlements": [],
                "authorizing_integration_owners": {"0": GUILD_ID},
                "context": 0,
                "attachment_size_limit": 10 * 1024 * 1024,
                "data": {
                    "id": command["id"],
                    "name": name,
                    "type": 1,
                    "guild_id": GUILD_ID,
                    "options": [
                        {"name": k, "type": _option_type(v), "value": v} for k, v in options.items()
                    ],
                },
            },
        )
        return token

    # -- REST --------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Request:
        body: Any = None
        uploads: list[Upload] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(data)
                else:
                    uploads.append(
                        Upload(
                            part.name or "",  # type: ignore[union-attr]
                            part.filename,  # type: ignore[union-attr]
                            part.headers.get("Content-Type"),
                            bytes(data),
                        )
                    )
        elif request.can_read_body:
            text = await request.text()
            body = json.loads(text) if text else None
        recorded = Request(request.method, request.path, body, tuple(uploads))
        self.seen.append(f"{request.method} {request.path}")
        async with self.changed:
            self.requests.append(recorded)
            self.changed.notify_all()
        return recorded

    async def wait_for(self, predicate: Any, timeout: float, what: str = "a request") -> Request:
        """The first recorded request matching ``predicate``, waiting up to ``timeout`` s."""

        async def find() -> Request:
            async with self.changed:
                while True:
                    for request in self.requests:
                        if predicate(request):
                            return request
                    await self.changed.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            seen = "\n".join(f"  {r.method} {r.path} {str(r.json)[:300]}" for r in self.requests)
            raise AssertionError(f"no {what} in {timeout} s; requests seen:\n{seen}") from None

    def _message(self, channel_id: str, body: Any, recorded: Request) -> dict[str, Any]:
        body = body or {}
        return {
            "id": self.new_id(),
            "channel_id": channel_id,
            "guild_id": GUILD_ID,
            "author": USER,
            "content": body.get("content") or "",
            "timestamp": NOW,
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [
                {
                    "id": self.new_id(),
                    "filename": u.filename or "file",
                    "size": len(u.data),
                    "url": f"https://cdn.fake.invalid/{u.filename}",
                    "proxy_url": f"https://cdn.fake.invalid/{u.filename}",
                    "content_type": u.content_type,
                }
                for u in recorded.uploads
            ],
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags") or 0,
        }

    async def _commands(self, request: web.Request) -> web.Response:
        """Command sync (PUT): give each command an id, as Discord does."""
        recorded = await self._record(request)
        self.commands = [
            {**c, "id": self.new_id(), "application_id": APP["id"], "version": "1"}
            for c in recorded.json
        ]
        self.synced.set()
        return await self._json(request, self.commands)

    async def _callback(self, request: web.Request) -> web.Response:
        """An interaction's answer; with ``with_response`` (discord.py asks for it) Discord
        returns the interaction and, for a message, the message it became."""
        recorded = await self._record(request)
        if request.query.get("with_response") not in ("1", "true"):
            return web.Response(status=204)
        body = recorded.json or {}
        data = body.get("data") or {}
        message = self._message(CHANNEL_ID, data, recorded)
        answered = {
            "id": request.match_info["id"],
            "type": 2,
            "response_message_id": message["id"],
            "response_message_loading": body.get("type") == 5,
            "response_message_ephemeral": bool((data.get("flags") or 0) & 64),
        }
        resource: dict[str, Any] = {"type": body.get("type")}
        if body.get("type") in (4, 7):  # a message, or an update of one
            resource["message"] = message
        return await self._json(request, {"interaction": answered, "resource": resource})

    async def _channel_message(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        channel = request.match_info.get("channel_id", CHANNEL_ID)
        return await self._json(request, self._message(channel, recorded.json, recorded))

    async def _webhook_message(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        return await self._json(request, self._message(CHANNEL_ID, recorded.json, recorded))

    async def _deleted(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=204)

    async def _channel(self, request: web.Request) -> web.Response:
        await self._record(request)
        return await self._json(request, GUILD["channels"][0])  # type: ignore[index]

    def extra_routes(self, app: web.Application) -> None:
        base = "/api/v10"
        app.router.add_post(base + "/interactions/{id}/{token}/callback", self._callback)
        app.router.add_post(base + "/webhooks/{app_id}/{token}", self._webhook_message)
        app.router.add_patch(
            base + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message
        )
        app.router.add_get(base + "/channels/{channel_id}", self._channel)
        app.router.add_post(base + "/channels/{channel_id}/messages", self._channel_message)
        app.router.add_patch(
            base + "/channels/{channel_id}/messages/{message_id}", self._channel_message
        )
        app.router.add_get(
            base + "/channels/{channel_id}/messages/{message_id}", self._channel_message
        )
        app.router.add_delete(base + "/channels/{channel_id}/messages/{message_id}", self._deleted)


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3
