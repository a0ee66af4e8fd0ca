"""The simulated WebUI's HTTP server: the ``/sdapi/v1/*`` and ``/internal/*`` routes jobqueue
uses, on aiohttp, plus private fault switches for tests under ``/_sim/``.

* ``POST /_sim/fault {"mode": ...}``: ``refuse`` (the server is down: close the listening
  socket and cut open connections), ``freeze`` (hold every request, make no progress: a hung
  process), ``slow`` (every answer takes ``slow_seconds`` longer), ``die`` (exit at once),
  ``none`` (back to normal).
* ``POST /_sim/config {"step_seconds", "load_seconds", "encode_seconds", "slow_seconds",
  "legacy", "version", "vram_gb", "oom_next"}``: timing; ``legacy`` answers 404 on
  ``/internal/*`` like a WebUI started with ``--nowebui`` (API only); ``version`` (``1.7``,
  ``1.8``, ``1.9``, ``1.10``; A1111 only) picks the release whose behaviour it follows (1.7: no
  task ids for API requests; up to 1.8: an unknown sampler is a 404); ``vram_gb`` the simulated
  VRAM and ``oom_next`` how many coming requests fail out of memory whatever their size;
  ``crash_after`` / ``crash_restart``: a request whose prompt holds
  :data:`~jobqueue.sims.server.CRASH_MARK` takes the WebUI down ``crash_after`` s in (every
  connection cut, the port refusing) and it restarts empty ``crash_restart`` s later.
* ``GET /_sim/requests``: the requests the WebUI routes received (method, path, query, body).
* ``GET /_sim/state``: fault mode, ``shared.state``, the loaded checkpoint, images generated,
  and per request (``force_task_id``) the steps it sampled and whether it was interrupted;
  ``crashes`` (how many times it crashed) and ``crashed`` (down right now).

A txt2img/img2img request runs to its end whatever its client does: the work is shielded
from aiohttp's handler cancellation, as the WebUI's (a thread under the queue lock) is.

The ``/_sim/`` routes are also served on an optional control port that keeps answering while
the main port refuses or is frozen. Errors have the WebUI's shapes: FastAPI's 422 ``detail``
lists (:mod:`jobqueue.sims.a1111.validation`) and ``api_middleware``'s
``{"error", "detail", "body", "errors"}`` for exceptions raised in a route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
import time
from collections import deque
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from jobqueue.sims.a1111.engine import Engine
from jobqueue.sims.a1111.validation import validate_request
from jobqueue.sims.a1111.webui import CHECKPOINTS, SAMPLERS, HTTPError, parse_version
from jobqueue.sims.server import CRASH_MARK, SimHTTPServer, SimulatorThread, run_until_signal

log = logging.getLogger(__name__)

#: Fault modes accepted by ``POST /_sim/fault``.
FAULT_MODES = ("none", "refuse", "freeze", "slow", "die")
_SIM_PREFIX = "/_sim/"
#: Routes a WebUI started with --nowebui (API only) does not have.
_LEGACY_MISSING = ("/internal/ping", "/internal/progress", "/internal/sysinfo", "/internal/pending-tasks")
_BOOL_TRUE = {"1", "on", "t", "true", "y", "yes"}
_BOOL_FALSE = {"0", "off", "f", "false", "n", "no"}


def _exception_body(status: int, detail: str, name: str = "HTTPException") -> web.Response:
    """``api_middleware.handle_exception``: how the WebUI answers an exception in a route
    (``errors`` is ``str(e)``: ``"404: Sampler not found"``, ``"'key'"`` for a KeyError)."""
    errors = f"{status}: {detail}" if name == "HTTPException" else detail
    body = {"error": name, "detail": detail if name == "HTTPException" else "", "body": "", "errors": errors}
    return web.json_response(body, status=status)


class A1111SimServer(SimHTTPServer):
    """One simulated WebUI: the engine, its routes, its socket and its fault switches."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7860, *, flavour: str = "a1111",
                 control_port: int | None = None, step_seconds: float = 0.05, load_seconds: float = 1.0,
                 version: str = "1.10", vram_gb: float = 24.0) -> None:
        super().__init__(host, port, control_port)
        self.flavour = flavour
        self.engine = Engine(flavour, step_seconds=step_seconds, load_seconds=load_seconds, version=version,
                             vram_gb=vram_gb)
        self.fault = "none"
        self.slow_seconds = 2.0
        #: Behave like a WebUI started with --nowebui: no /internal/* routes.
        self.legacy = False
        self.requests: deque[dict[str, Any]] = deque(maxlen=5000)
        #: Requests whose client went away: still running, as on the WebUI.
        self._orphaned: set[asyncio.Future[Any]] = set()
        #: Every request being generated (a crash ends them all), and the crash under way.
        self._works: set[asyncio.Future[Any]] = set()
        self._crashing: asyncio.Task[None] | None = None
        #: Seconds a crashed WebUI stays down before it listens again, empty (negative: for good).
        self.crash_restart = 1.0
        #: Seconds into a request carrying :data:`~jobqueue.sims.server.CRASH_MARK` before it crashes.
        self.crash_after = 0.3

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 2**20)
        app.add_routes(self._routes())
        app.add_routes(self._sim_routes())
        await self.start_http(app, self._sim_routes())

    async def stop(self) -> None:
        self.engine.thawed.set()  # let held requests finish instead of waiting on shutdown
        await self.stop_http()

    # -- faults ----------------------------------------------------------------------------
    async def set_fault(self, mode: str) -> None:
        """Switch fault ``mode`` on (see the module docstring); ``none`` restores service."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r} (known: {', '.join(FAULT_MODES)})")
        log.warning("a1111-sim fault: %s", mode)
        if mode == "die":
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)
        elif mode == "freeze":
            self.engine.thawed.clear()
            if not self.listening:  # a hung process still holds its listening socket
                await self.listen()
        elif mode == "refuse":
            await self.stop_listening()
        elif mode in ("none", "slow"):
            self.engine.thawed.set()
            if not self.listening:
                await self.listen()
        self.fault = mode

    # -- plumbing --------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_SIM_PREFIX):
            return await handler(request)
        if self.fault == "refuse":
            # A kept-alive connection outlives the closed listening socket: cut it like a dead server.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("refusing")
        await self.engine.thawed.wait()
        if self.fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        raw = await request.read() if request.can_read_body else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")[:2000]
        if isinstance(body, dict) and isinstance(body.get("init_images"), list):
            body = {**body, "init_images": [f"<{len(str(i))} chars>" for i in body["init_images"]]}
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "body": body, "time": time.time()})
        if self.legacy and request.path in _LEGACY_MISSING:
            return web.json_response({"detail": "Not Found"}, status=404)
        return await handler(request)

    def _sim_routes(self) -> list[web.RouteDef]:
        async def fault(request: web.Request) -> web.Response:
            data = await request.json()
            try:
                await self.set_fault(str(data.get("mode", "")))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"mode": self.fault})

        async def config(request: web.Request) -> web.Response:
            try:
                self.configure(await request.json())
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"step_seconds": self.engine.step_seconds, "version": self.engine.version,
                                      "load_seconds": self.engine.load_seconds, "slow_seconds": self.slow_seconds})

        async def requests(request: web.Request) -> web.Response:
            return web.json_response(list(self.requests))

        async def state(request: web.Request) -> web.Response:
            engine = self.engine
            return web.json_response({"fault": self.fault, "url": self.url, "flavour": self.flavour,
                                      "state": engine.state.dict(), "loaded": engine.loaded, "loads": engine.loads,
                                      "current_task": engine.tasks.current, "pending": list(engine.tasks.pending),
                                      "generated": engine.generated, "busy": engine.lock.locked(),
                                      "runs": engine.runs, "options": engine.opts,
                                      "crashes": self.crashes, "crashed": self.crashed})

        return [web.post("/_sim/fault", fault), web.post("/_sim/config", config),
                web.get("/_sim/requests", requests), web.get("/_sim/state", state)]

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/sdapi/v1/txt2img", self.txt2img),
            web.post("/sdapi/v1/img2img", self.img2img),
            web.get("/sdapi/v1/progress", self.progress),
            web.post("/sdapi/v1/interrupt", self.interrupt),
            web.post("/sdapi/v1/skip", self.skip),
            web.get("/sdapi/v1/options", self.get_options),
            web.post("/sdapi/v1/options", self.set_options),
            web.get("/sdapi/v1/sd-models", self.sd_models),
            web.get("/sdapi/v1/samplers", self.samplers),
            web.get("/internal/ping", self.ping),
            web.get("/sdapi/v1/memory", self.memory),
            web.post("/internal/progress", self.task_progress),
            web.get("/internal/pending-tasks", self.pending_tasks),
            web.get("/internal/sysinfo", self.sysinfo),
        ]

    def configure(self, data: dict[str, Any]) -> None:
        """``POST /_sim/config``: timing, ``legacy``, ``version``, ``vram_gb``, ``oom_next``."""
        for key in ("step_seconds", "load_seconds", "encode_seconds", "vram_gb"):
            if key in data:
                setattr(self.engine, key, float(data[key]))
        if "oom_next" in data:
            self.engine.oom_next = int(data["oom_next"])
        for key in ("slow_seconds", "crash_restart", "crash_after"):
            if key in data:
                setattr(self, key, float(data[key]))
        if "legacy" in data:
            self.legacy = bool(data["legacy"])
        if "version" in data and self.flavour != "forge":
            self.engine.release = parse_version(str(data["version"]))

    # -- WebUI routes ----------------------------------------------------------------------
    async def _generate(self, request: web.Request, mode: str) -> web.Response:
        parsed, errors = validate_request(await request.read(), mode, self.flavour)
        if parsed is None:
            return web.json_response({"detail": errors}, status=422)
        # The WebUI runs the request in a thread that nobody cancels: a client that closes
        # its connection does not stop it (aiohttp would cancel the handler; the work is shielded).
        work = asyncio.ensure_future(self.engine.generate(mode, parsed))
        self._works.add(work)
        work.add_done_callback(self._works.discard)
        if CRASH_MARK in str(parsed.get("prompt") or ""):
            self._crashing = asyncio.ensure_future(self._crash_soon())
        try:
            answer = await asyncio.shield(work)
        except asyncio.CancelledError:
            self._orphaned.add(work)
            work.add_done_callback(self._orphan_done)
            raise
        except HTTPError as exc:
            return _exception_body(exc.status, exc.detail, exc.name)
        return web.json_response(answer)

    async def _crash_soon(self) -> None:
        """A request asked the WebUI to die mid-request: after ``crash_after`` s it crashes and
        restarts empty (:meth:`~jobqueue.sims.server.SimHTTPServer.crash`)."""
        await asyncio.sleep(self.crash_after)
        log.warning("a1111-sim: crashing (%s in a prompt); back in %s s", CRASH_MARK, self.crash_restart)
        await self.crash(self._forget_everything, self.crash_restart if self.crash_restart >= 0 else None)

    async def _forget_everything(self) -> None:
        """A restarted WebUI: no request running or queued, a fresh ``shared.state``, the same settings."""
        for work in list(self._works):
            work.cancel()
        old = self.engine
        self.engine = Engine(self.flavour, step_seconds=old.step_seconds, load_seconds=old.load_seconds,
                             vram_gb=old.vram_gb)
        self.engine.release, self.engine.encode_seconds = old.release, old.encode_seconds

    def _orphan_done(self, work: asyncio.Future[Any]) -> None:
        self._orphaned.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.info("a1111-sim: a request whose client left ended with %r", work.exception())

    async def txt2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "txt2img")

    async def img2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "img2img")

    async def progress(self, request: web.Request) -> web.Response:
        raw = request.query.get("skip_current_image", "false").strip().lower()
        if raw not in _BOOL_TRUE | _BOOL_FALSE:
            if self.flavour == "forge":
                error: dict[str, Any] = {"type": "bool_parsing", "loc": ["query", "skip_current_image"],
                                         "msg": "Input should be a valid boolean, unable to interpret input",
                                         "input": request.query["skip_current_image"]}
            else:
                error = {"loc": ["query", "skip_current_image"], "msg": "value could not be parsed to a boolean",
                         "type": "type_error.bool"}
            return web.json_response({"detail": [error]}, status=422)
        try:
            return web.json_response(self.engine.progress(raw in _BOOL_TRUE))
        except HTTPError as exc:
            return _exception_body(exc.status, exc.detail, exc.name)

    async def interrupt(self, request: web.Request) -> web.Response:
        self.engine.interrupt()
        return web.json_response({})

    async def skip(self, request: web.Request) -> web.Response:
        self.engine.skip()
        return web.json_response(None)

    async def get_options(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.opts)

    async def set_options(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            title = self.engine.set_options(data)
        except HTTPError as exc:
            return _exception_body(exc.status, exc.detail, exc.name)
        if title is not None:
            async with self.engine.lock:  # the WebUI loads weights through its queue lock
                await self.engine.load_checkpoint(title)
        self.engine.opts.update(data)
        return web.json_response(None)

    async def sd_models(self, request: web.Request) -> web.Response:
        return web.json_response([{"title": title, "model_name": name, "hash": short, "sha256": None,
                                   "filename": f"/models/Stable-diffusion/{title.split(' ')[0]}", "config": None}
                                  for title, (name, short) in CHECKPOINTS.items()])

    async def samplers(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": name, "aliases": [], "options": {}} for name in SAMPLERS])

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def memory(self, request: web.Request) -> web.Response:
        """``modules/api/api.py`` ``get_memory``: RAM, and the CUDA device's ``mem_get_info`` as
        ``cuda.system`` (bytes) with torch's allocator statistics."""
        total = int(self.engine.vram_gb * 2**30)
        used = int(min(self.engine.vram_gb, 2.0) * 2**30)
        zero = {"current": 0, "peak": 0}
        return web.json_response({
            "ram": {"free": 8 * 2**30, "used": 2**30, "total": 9 * 2**30},
            "cuda": {"system": {"free": total - used, "used": used, "total": total}, "active": zero,
                     "allocated": zero, "reserved": zero, "inactive": zero, "events": {"retries": 0, "oom": 0}}})

    async def task_progress(self, request: web.Request) -> web.Response:
        data = await request.json()
        if not isinstance(data, dict):
            data = {}
        return web.json_response(self.engine.task_progress(data))

    async def pending_tasks(self, request: web.Request) -> web.Response:
        tasks = list(self.engine.tasks.pending)
        return web.json_response({"size": len(tasks), "tasks": tasks})

    async def sysinfo(self, request: web.Request) -> web.Response:
        # modules/sysinfo.py get_dict() (a subset), served as ui.py's download_sysinfo does:
        # JSON text in a PlainTextResponse.
        info = {"Platform": platform.platform(), "Python": platform.python_version(),
                "Version": self.engine.version, "Commit": "simulated", "Script path": os.getcwd(),
                "Data path": os.getcwd(), "Commandline": list(sys.argv), "Extensions": [],
                "Config": dict(self.engine.opts)}
        stamp = time.strftime("%Y-%m-%d-%H-%M", time.gmtime())
        return web.Response(text=json.dumps(info, ensure_ascii=False, indent=4), content_type="text/plain",
                            headers={"Content-Disposition": f'inline; filename="sysinfo-{stamp}.json"'})


def run(host: str = "127.0.0.1", port: int = 7860, **options: Any) -> None:
    """Serve a simulated WebUI on ``host:port`` until SIGINT/SIGTERM (blocking).

    Options: ``flavour``, ``control_port``, ``step_seconds``, ``load_seconds``, ``announce``
    (print one JSON line with the URLs once listening: how a parent learns a port chosen with 0).
    """
    announce = bool(options.pop("announce", False))
    run_until_signal(A1111SimServer(host, port, **options), announce,
                     lambda srv: f"a1111-sim ({srv.flavour}) listening on {srv.url}",
                     lambda srv: {"url": srv.url, "control_url": srv.control_url})


class A1111SimulatorThread(SimulatorThread):
    """A WebUI simulator on its own event loop in a background thread (for in-process tests)."""

    server_class = A1111SimServer
    name = "a1111-sim"

    def configure(self, **options: Any) -> None:
        """Set what ``POST /_sim/config`` sets (timing, ``legacy``, ``version``, ``vram_gb``, ``oom_next``)."""
        self.server.configure(dict(options))

