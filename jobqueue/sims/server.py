"""The lifecycle every service simulator shares (ComfyUI's, the WebUI's): an aiohttp app on a
port that can stop and start listening (the ``refuse`` fault), private ``/_sim/`` routes also
served on an optional control port, serving until a signal, and a background-thread runner
for in-process tests.

A crash (:meth:`SimHTTPServer.crash`) is the process dying under a supervisor that starts it
again: the port refuses connections, every open one (websockets, requests in flight) is cut,
the simulator forgets everything it held (its queue, history, running work) and, after
``restart_after`` seconds, listens again on the same port, empty. Both simulators crash on
command this way (ComfyUI's ``SimCrash`` node, the WebUI's :data:`CRASH_MARK` in a prompt).

A simulator subclasses :class:`SimHTTPServer`, builds its app in ``start()`` and hands it to
:meth:`SimHTTPServer.start_http`; :func:`run_until_signal` serves one from the command line,
:class:`SimulatorThread` in a test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

#: A prompt containing this makes the WebUI simulator crash (and restart empty) mid-request.
CRASH_MARK = "[sim:crash]"


def _bound_port(site: web.TCPSite) -> int:
    """The port a site listens on (the one the OS chose for port 0)."""
    server = site._server  # aiohttp keeps the asyncio server private; its sockets hold the port
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return port


class SimHTTPServer:
    """The HTTP side of one simulator: main port (can stop listening) + optional control port."""

    def __init__(self, host: str, port: int, control_port: int | None = None) -> None:
        self.host = host
        self.port = port
        self.control_port = control_port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._control_runner: web.AppRunner | None = None
        #: How many times the server crashed (:meth:`crash`).
        self.crashes = 0
        #: Set while the server is down after a crash.
        self.crashed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str | None:
        return f"http://{self.host}:{self.control_port}" if self.control_port is not None else None

    @property
    def listening(self) -> bool:
        """False while the main port is closed (the ``refuse`` fault)."""
        return self._site is not None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self.stop_http()

    async def start_http(self, app: web.Application, sim_routes: list[web.RouteDef]) -> None:
        """Serve ``app`` on the main port and ``sim_routes`` on the control port, if one was asked for."""
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await self.listen()
        if self.control_port is not None:
            control = web.Application()
            control.add_routes(sim_routes)
            self._control_runner = web.AppRunner(control, access_log=None)
            await self._control_runner.setup()
            site = web.TCPSite(self._control_runner, self.host, self.control_port)
            await site.start()
            self.control_port = _bound_port(site)

    async def listen(self) -> None:
        """Open the main port (again); the port stays the one first bound."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self.port = _bound_port(self._site)

    async def stop_listening(self) -> None:
        """Close the main port: new connections are refused (open ones are the caller's)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def abort_connections(self) -> None:
        """Cut every open connection of the main port at once (a dead process's sockets)."""
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else ():
            if handler.transport is not None:
                handler.transport.abort()

    async def crash(self, reset: Callable[[], Awaitable[None]], restart_after: float | None) -> None:
        """Die and come back empty (see the module doc): stop listening, cut every connection,
        ``reset()`` (forget everything), listen again after ``restart_after`` s (None: stay down)."""
        self.crashes += 1
        self.crashed = True
        await self.stop_listening()
        self.abort_connections()
        await reset()
        if restart_after is None:
            return
        await asyncio.sleep(max(restart_after, 0.0))
        if not self.listening:
            await self.listen()
        self.crashed = False

    async def stop_http(self) -> None:
        for runner in (self._runner, self._control_runner):
            if runner is not None:
                await runner.cleanup()


async def serve(server: Any, ready: Callable[[Any], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Start ``server``, call ``ready(server)``, serve until ``stop`` is set (or forever)."""
    try:
        await server.start()
        if ready is not None:
            ready(server)
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()


def run_until_signal(server: Any, announce: bool, banner: Callable[[Any], str],
                     details: Callable[[Any], dict[str, Any]]) -> None:
    """Serve ``server`` until SIGINT/SIGTERM (blocking). Once listening, print one JSON line of
    ``details(server)`` plus the pid when ``announce`` (how a parent process learns ports chosen
    with port 0), else ``banner(server)``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(srv: Any) -> None:
            print(json.dumps({**details(srv), "pid": os.getpid()}) if announce else banner(srv), flush=True)

        await serve(server, ready, stop)

    asyncio.run(main())


_T = TypeVar("_T", bound="SimulatorThread")


class SimulatorThread:
    """A simulator on its own event loop in a background thread (for in-process tests).

    Subclasses run a simulator by naming its ``server_class`` (anything with async
    ``start``/``stop``, ``set_fault``, ``requests`` and a ``url``)."""

    server_class: Any = None
    #: Thread name, also used in the error when the server does not start.
    name = "simulator"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.server = self.server_class(host, port, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        url: str = self.server.url
        return url

    def start(self: _T, timeout: float = 10.0) -> _T:
        started = threading.Event()

        def main() -> None:
            async def body() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                await serve(self.server, lambda _: started.set(), self._stop)

            asyncio.run(body())

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError(f"{self.name} did not start")
        return self

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run ``coro`` on the simulator's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def fault(self, mode: str) -> None:
        """Switch a fault on or off (``die`` is not offered in-process: use a subprocess)."""
        if mode == "die":
            raise ValueError("'die' would end the test process: run the simulator in a subprocess")
        self.call(self.server.set_fault(mode))

    def requests(self) -> list[dict[str, Any]]:
        return list(self.server.requests)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None
