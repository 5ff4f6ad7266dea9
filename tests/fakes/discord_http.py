"""A small fake of Discord's REST API on 127.0.0.1, for tests of the real bot process.

Only Discord's servers are faked (they cannot be reached from here). It answers what
discord.py asks at login and command sync, and accepts the gateway websocket but never says HELLO,
so the bot sits "connecting" until it is told to stop. It records every request it saw.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["FakeDiscord"]

USER = {
    "id": "100000000000000001",
    "username": "dreambot",
    "discriminator": "0",
    "global_name": None,
    "avatar": None,
    "bot": True,
}
APP = {
    "id": "100000000000000001",
    "name": "dreambot",
    "description": "",
    "icon": None,
    "bot_public": True,
    "bot_require_code_grant": False,
    "owner": {**USER, "id": "200000000000000002", "username": "owner", "bot": False},
    "verify_key": "0" * 64,
    "flags": 0,
}


@dataclass
class FakeDiscord:
    seen: list[str] = field(default_factory=list)
    gateway_asked: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    async def _json(self, request: web.Request, body: object) -> web.Response:
        self.seen.append(f"{request.method} {request.path}")
        # discord.py parses JSON only when the content type is exactly application/json.
        return web.Response(
            body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )

    async def _me(self, request: web.Request) -> web.Response:
        return await self._json(request, USER)

    async def _app(self, request: web.Request) -> web.Response:
        return await self._json(request, APP)

    async def _commands(self, request: web.Request) -> web.Response:
        return await self._json(request, [])

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return await self._json(request, {"url": self.gateway_url, "shards": 1})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """Accept the websocket and stay silent: the bot waits for HELLO until told to stop."""
        self.seen.append(f"WS {request.path}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.gateway_asked.set()
        async for _ in ws:
            pass
        return ws

    def extra_routes(self, app: web.Application) -> None:
        """More routes, for fakes that answer more of Discord."""

    async def start(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/api/v10/users/@me", self._me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self._app)
        app.router.add_put("/api/v10/applications/{app_id}/commands", self._commands)
        app.router.add_put(
            "/api/v10/applications/{app_id}/guilds/{guild_id}/commands", self._commands
        )
        app.router.add_get("/api/v10/gateway/bot", self._gateway_info)
        app.router.add_get("/gateway", self._gateway)
        self.extra_routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
