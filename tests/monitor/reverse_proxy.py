"""A tiny reverse proxy (aiohttp, its own thread and loop) for the tests of a monitor behind one:
it serves ``<strip>/...`` by asking the upstream for ``/...`` (HTTP and websockets), and says
where it mounted it as nginx would be told to: ``X-Forwarded-Prefix``, ``-For``, ``-Host`` and
``-Proto``. Everything outside ``strip`` is its own 404, so a page that asks for a path outside
the prefix gets an error the test sees."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
from aiohttp import web

#: Headers that belong to one hop (never passed on), and those aiohttp sets itself.
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
       "content-length", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
       "sec-websocket-accept", "content-encoding"}


class ReverseProxy:
    """``ReverseProxy(upstream, "/ops").start()``; ``url`` is where browsers go; ``stop()``."""

    def __init__(self, upstream: str, strip: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.strip = strip
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="reverse-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.strip}"

    def start(self) -> ReverseProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers.update({"X-Forwarded-Prefix": self.strip, "X-Forwarded-For": request.remote or "",
                        "X-Forwarded-Host": request.host, "X-Forwarded-Proto": "http"})
        return headers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path_qs
        if not path.startswith(self.strip + "/"):
            return web.Response(status=404, text=f"the proxy serves only {self.strip}/\n")
        target = self.upstream + path[len(self.strip):]
        assert self._session is not None
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target)
        async with self._session.request(request.method, target, headers=self._headers(request),
                                         data=await request.read(), allow_redirects=False) as upstream:
            body = await upstream.read()
            response = web.Response(status=upstream.status, body=body)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP:
                    response.headers.add(key, value)
            return response

    async def _websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        async with self._session.ws_connect("ws" + target[len("http"):], headers=self._headers(request)) as upstream:
            browser = web.WebSocketResponse()
            await browser.prepare(request)

            async def pump(source: Any, sink: Any) -> None:
                async for message in source:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await sink.send_str(message.data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        await sink.send_bytes(message.data)
                await sink.close()

            await asyncio.gather(pump(upstream, browser), pump(browser, upstream), return_exceptions=True)
            return browser
