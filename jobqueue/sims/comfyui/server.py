"""The simulator's HTTP + websocket server: ComfyUI's routes (also under ``/api/``) on
aiohttp, plus private fault switches for tests under ``/_sim/``.

* ``POST /_sim/fault {"mode": ...}``: ``refuse`` (close the listening socket and every open
  connection), ``freeze`` (send nothing, make no progress, hold every request), ``drop_ws``
  (close every websocket once), ``die`` (exit the process at once), ``none`` (back to normal).
* ``GET /_sim/requests``: the requests the ComfyUI routes received (method, path, body).
* ``GET /_sim/state``: queue, history, fault mode, options, executor alive, crashes (``SimCrash``:
  :meth:`SimHTTPServer.crash`), ``POST /free`` count, checkpoints in VRAM (LRU first), loads, collections (``gc_pause``).
* ``POST /upload/image`` and ``/upload/mask``: :mod:`jobqueue.sims.comfyui.uploads`, into
  the input folder beside the output folder, which ``LoadImage`` reads.
* ``POST /_sim/options {...}``: the switches of :mod:`jobqueue.sims.comfyui.options`
  (``history_gap``, ``gc_pause``, ``oom_next``, ``load_seconds``...); answers them all.

As ComfyUI's ``server.py`` (v0.3.64): a socket is registered under its ``clientId``, replacing
(without closing) an older one, and *any* handler for that id removes the registration when it
ends, so an old connection closing late silences the new one; a body ``POST /prompt`` cannot
decode as JSON is a 500 (aiohttp's plain-text answer); ``/view`` answers as
:mod:`jobqueue.sims.comfyui.view` describes.

The ``/_sim/`` routes are also served on an optional control port, which keeps answering
while the main port refuses or is frozen.

``run()`` serves until interrupted; :class:`SimulatorThread` runs a server in a background
thread for in-process tests (see :mod:`jobqueue.sims.comfyui.process` for a subprocess). The
server lifecycle they share with the WebUI simulator lives in :mod:`jobqueue.sims.server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from jobqueue.sims.comfyui import inputs, models, uploads
from jobqueue.sims.comfyui.engine import Simulator
from jobqueue.sims.comfyui.nodes import NODES
from jobqueue.sims.comfyui.options import SimOptions
from jobqueue.sims.comfyui.validation import validate_prompt
from jobqueue.sims.comfyui.view import view_file
from jobqueue.sims.server import SimHTTPServer, run_until_signal
from jobqueue.sims.server import SimulatorThread as _SimulatorThread
from jobqueue.sims.server import serve as serve

__all__ = ["SimServer", "SimulatorThread", "run", "serve"]

log = logging.getLogger(__name__)

#: ComfyUI version the simulator imitates (the recorded traces' server).
COMFYUI_VERSION = "0.3.64"
#: Fault modes accepted by ``POST /_sim/fault``.
FAULT_MODES = ("none", "refuse", "freeze", "drop_ws", "die")
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}
_SIM_PREFIX = "/_sim/"
#: Name prefix of the simulator's temporary folders (``comfyui-sim-<pid>-<random>``).
TEMP_PREFIX = "comfyui-sim-"


def remove_stale_temp_dirs() -> None:
    """Remove the temporary folders of simulators that died without cleaning up (their
    names carry the pid; a folder whose process is gone is stale)."""
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # someone else's live process
            pass


def _memory() -> tuple[int, int]:
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError, IndexError):
        return 16 * 2**30, 8 * 2**30


class SimServer(SimHTTPServer):
    """One simulated ComfyUI: the engine, its routes, its sockets and its fault switches."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8188, *, output_dir: str | None = None,
                 temp_dir: str | None = None, control_port: int | None = None,
                 models_present: list[str] | None = None, vram_gb: float | None = None,
                 history_gap: float = 0.0, newer: bool = False, input_dir: str | None = None) -> None:
        super().__init__(host, port, control_port)
        #: The switches of :mod:`jobqueue.sims.comfyui.options` (shared with the engine).
        self.options = SimOptions(history_gap=history_gap, newer=newer)
        #: VRAM (GiB) of the simulated GPU; None: a CPU device, as ComfyUI reports without one.
        self.vram_gb = vram_gb
        if models_present is not None:
            models.set_models(checkpoints=models_present)
        root = None
        if not (output_dir and temp_dir):
            remove_stale_temp_dirs()
            root = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        #: The temporary folder this server made (removed when it stops), if any.
        self.temp_root = root
        self.output_dir = output_dir or os.path.join(root or "", "output")
        self.temp_dir = temp_dir or os.path.join(root or "", "temp")
        #: Where uploads go and ``LoadImage`` reads (beside the output folder).
        self.input_dir = input_dir or os.path.join(os.path.dirname(os.path.abspath(self.output_dir)), "input")
        for folder in (self.output_dir, self.temp_dir, self.input_dir):
            os.makedirs(folder, exist_ok=True)
        self.sim: Simulator | None = None
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.fault = "none"
        self.requests: deque[dict[str, Any]] = deque(maxlen=5000)
        self._worker: asyncio.Task[None] | None = None
        self._crashing: asyncio.Task[None] | None = None
        #: ``POST /free`` requests that asked to unload models or free memory.
        self.frees = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._new_engine()
        app = web.Application(middlewares=[self._middleware], client_max_size=FEATURES["max_upload_size"])
        for prefix in ("", "/api"):
            app.add_routes(self._routes(prefix))
        app.add_routes(self._sim_routes())
        await self.start_http(app, self._sim_routes())

    async def stop(self) -> None:
        if self.sim is not None:
            self.sim.thawed.set()  # let held requests finish instead of waiting on shutdown
        if self._worker is not None:
            self._worker.cancel()
        await self._close_sockets()
        await self.stop_http()
        if self.temp_root is not None:
            shutil.rmtree(self.temp_root, ignore_errors=True)

    def _new_engine(self) -> None:
        """A fresh queue, history, cache and executor (at start, and after a crash)."""
        self.sim = Simulator(self.output_dir, self.temp_dir, self._deliver, self.options, self.vram_gb,
                             input_dir=self.input_dir)
        self.sim.on_crash = self._crash_soon
        self._worker = asyncio.get_running_loop().create_task(self.sim.worker())

    def _crash_soon(self) -> None:
        """The ``SimCrash`` node ran: die and restart empty (:meth:`SimHTTPServer.crash`)."""
        log.warning("comfyui-sim: crashing (SimCrash); back in %s s", self.options.crash_restart)
        restart = self.options.crash_restart if self.options.crash_restart >= 0 else None
        task = asyncio.get_running_loop().create_task(self.crash(self._forget_everything, restart))
        self._crashing = task  # keep a reference: the loop holds tasks only weakly

    async def _forget_everything(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self.sockets.clear()
        self._new_engine()

    async def _close_sockets(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        self.sockets.clear()

    # -- faults ----------------------------------------------------------------------------
    async def set_fault(self, mode: str) -> None:
        """Switch fault ``mode`` on (see the module docstring); ``none`` restores service."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r} (known: {', '.join(FAULT_MODES)})")
        assert self.sim is not None
        log.warning("comfyui-sim fault: %s", mode)
        if mode == "die":
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)
            self.fault = mode
            return
        if mode == "drop_ws":
            await self._close_sockets()
            return
        if mode == "freeze":
            self.sim.thawed.clear()
        elif mode == "refuse":
            await self.stop_listening()
            await self._close_sockets()
        elif mode == "none":
            self.sim.thawed.set()
            if not self.listening:
                await self.listen()
        self.fault = mode

    async def post_free(self, request: web.Request) -> web.Response:
        """ComfyUI's ``POST /free``: ``unload_models`` / ``free_memory`` flags the prompt worker
        acts on between prompts; 200 with an empty body (a simulated GPU has nothing to free)."""
        try:
            data = await request.json()
        except ValueError:
            data = {}
        if isinstance(data, dict) and (data.get("unload_models") or data.get("free_memory")):
            self.frees += 1
        return web.Response(status=200)

    # -- plumbing --------------------------------------------------------------------------
    async def _deliver(self, message: Any, sid: str | None) -> None:
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            if ws.closed:
                continue
            try:
                if isinstance(message, (bytes, bytearray)):
                    await ws.send_bytes(bytes(message))
                else:
                    await ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                pass

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_SIM_PREFIX):
            return await handler(request)
        if self.fault == "refuse":
            # A kept-alive connection outlives the closed listening socket: cut it like a dead server.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("refusing")
        assert self.sim is not None
        await self.sim.thawed.wait()
        body: Any = None
        if request.content_type.startswith("multipart/"):
            body = {"multipart": request.content_length}  # an upload: its handler reads the form
        elif request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "body": body, "time": time.time()})
        return await handler(request)

    def _sim_routes(self) -> list[web.RouteDef]:
        async def fault(request: web.Request) -> web.Response:
            data = await request.json()
            try:
                await self.set_fault(str(data.get("mode", "")))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"mode": self.fault})

        async def requests(request: web.Request) -> web.Response:
            return web.json_response(list(self.requests))

        async def state(request: web.Request) -> web.Response:
            assert self.sim is not None
            return web.json_response({"fault": self.fault, "url": self.url, "queue": self.sim.current_queue(),
                                      "history": len(self.sim.history), "sockets": len(self.sockets),
                                      "output_dir": self.output_dir, "input_dir": self.input_dir,
                                      "options": self.options.as_dict(), "executor": "dead" if self.sim.dead else "alive",
                                      "crashes": self.crashes, "crashed": self.crashed, "frees": self.frees,
                                      **self.sim.counts()})

        async def options(request: web.Request) -> web.Response:
            try:
                self.options.update(await request.json())
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(self.options.as_dict())

        return [web.post("/_sim/fault", fault), web.get("/_sim/requests", requests), web.get("/_sim/state", state),
                web.post("/_sim/models", models.set_models_route), web.post("/_sim/options", options)]

    def _routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.get(prefix + "/ws", self.websocket),
            web.get(prefix + "/prompt", self.get_prompt),
            web.post(prefix + "/prompt", self.post_prompt),
            web.get(prefix + "/queue", self.get_queue),
            web.post(prefix + "/free", self.post_free),
            web.post(prefix + "/queue", self.post_queue),
            web.get(prefix + "/history", self.get_history),
            web.get(prefix + "/history/{prompt_id}", self.get_history_item),
            web.post(prefix + "/history", self.post_history),
            web.post(prefix + "/interrupt", self.post_interrupt),
            web.post(prefix + "/api/jobs/{job_id}/cancel", self.cancel_job),
            web.get(prefix + "/system_stats", self.system_stats),
            web.get(prefix + "/object_info", self.object_info),
            web.get(prefix + "/object_info/{node_class}", self.object_info_one),
            web.get(prefix + "/view", self.view),
            web.get(prefix + "/features", self.features),
            web.get(prefix + "/models", self.model_folders),
            web.get(prefix + "/models/{folder}", self.model_files),
            *uploads.routes(prefix, {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}),
        ]

    # -- ComfyUI routes --------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        assert self.sim is not None
        ws = web.WebSocketResponse(max_msg_size=64 * 2**20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        # As ComfyUI: the new socket replaces the old one's registration without closing it...
        self.sockets[sid] = ws
        self.sim.client_features[sid] = {}
        try:
            await self.sim.send("status", {"status": self.sim.queue_info(), "sid": sid}, sid)
            if self.sim.client_id == sid and self.sim.last_node_id is not None and self.sim.running is not None:
                await self.sim.send("executing", {"node": self.sim.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    await self._handshake(sid, msg.data)
                first = False
        finally:
            # ...and whichever handler of the id ends first removes the registration, even
            # when it belongs to a newer socket (the old one closing late silences the new one).
            self.sockets.pop(sid, None)
            self.sim.client_features.pop(sid, None)
        return ws

    async def _handshake(self, sid: str, text: str) -> None:
        """A socket's first message: the client's feature flags, answered with the server's."""
        assert self.sim is not None
        try:
            data = json.loads(text)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("type") == "feature_flags":
            flags = data.get("data")
            self.sim.client_features[sid] = dict(flags) if isinstance(flags, dict) else {}
            await self.sim.send("feature_flags", dict(FEATURES), sid)

    async def get_prompt(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        return web.json_response(self.sim.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        try:
            data = json.loads(await request.text())  # not JSON: ComfyUI's handler raises, aiohttp answers 500
            if "number" in data:
                number = float(data["number"])
            else:
                number = self.sim.next_number(bool(data.get("front")) if isinstance(data, dict) else False)
            has_prompt = "prompt" in data
        except (ValueError, TypeError, AttributeError):
            raise web.HTTPInternalServerError(text="500 Internal Server Error\n\nServer got itself in trouble") from None
        if not has_prompt or not isinstance(data, dict):
            missing = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}
            return web.json_response({"error": missing, "node_errors": {}}, status=400)
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        if self.options.newer and data.get("prompt_id") is not None and not _canonical_uuid(data["prompt_id"]):
            bad = {"type": "invalid_prompt_id", "message": "prompt_id must be a valid UUID",
                   "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to "
                              "let the server generate one", "extra_info": {}}
            return web.json_response({"error": bad, "node_errors": {}}, status=400)
        ok, error, outputs, node_errors = validate_prompt(data["prompt"], newer=self.options.newer,
                                                          folders=self.sim.folders)
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(data.get("extra_data") or {})
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        await self.sim.put(prompt_id, data["prompt"], extra, outputs, number)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        return web.json_response(self.sim.current_queue())

    async def post_queue(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        data = await request.json()
        if data.get("clear"):
            await self.sim.clear()
        if "delete" in data:
            await self.sim.delete([str(x) for x in data["delete"]])
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        max_items = int(request.query["max_items"]) if "max_items" in request.query else None
        offset = int(request.query.get("offset", -1))
        history = self.sim.history
        if offset < 0 and max_items is not None:
            offset = len(history) - max_items
        out: dict[str, Any] = {}
        for i, key in enumerate(history):
            if i >= offset:
                out[key] = history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def get_history_item(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        pid = request.match_info["prompt_id"]
        entry = self.sim.history.get(pid)
        return web.json_response({pid: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        data = await request.json()
        if data.get("clear"):
            self.sim.history.clear()
        for pid in data.get("delete", []):
            self.sim.history.pop(str(pid), None)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        assert self.sim is not None
        data: Any = {}
        if request.can_read_body:
            try:
                data = await request.json()
            except ValueError:
                data = {}
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        self.sim.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response(status=200)

    async def cancel_job(self, request: web.Request) -> web.Response:
        """Newer ComfyUI's atomic cancel (404 in 0.3.64 mode, which has no such route)."""
        assert self.sim is not None
        if not self.options.newer:
            raise web.HTTPNotFound()
        return web.json_response({"cancelled": await self.sim.cancel(request.match_info["job_id"])})

    async def system_stats(self, request: web.Request) -> web.Response:
        total, free = _memory()
        system = {
            "os": os.name, "ram_total": total, "ram_free": free, "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95", "python_version": sys.version,
            "pytorch_version": "simulated", "embedded_python": False, "argv": list(sys.argv),
        }
        if self.options.older:  # before 0.3: no version, no template or frontend pins
            system = {k: v for k, v in system.items() if k.startswith(("python", "pytorch")) or "version" not in k}
        used = self.sim.vram_used_gb() if self.sim else 0.0
        return web.json_response({"system": system, "devices": models.devices(self.vram_gb, total, free, used)})

    def _node_info(self, name: str) -> dict[str, Any]:
        """One node's ``/object_info``, its file combos listing the input folder now."""
        files = inputs.input_files(self.input_dir) if name == "LoadImageMask" else inputs.input_images(self.input_dir)
        return NODES[name].object_info(files)

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: self._node_info(name) for name in NODES})

    async def object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        return web.json_response({name: self._node_info(name)} if name in NODES else {})

    async def view(self, request: web.Request) -> web.StreamResponse:
        assert self.sim is not None
        return view_file(request.query, {"output": self.output_dir, "temp": self.temp_dir})

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(dict(FEATURES))

    async def model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(list(models.FOLDERS))

    async def model_files(self, request: web.Request) -> web.Response:
        files = models.folder_files(request.match_info["folder"])
        return web.Response(status=404) if files is None else web.json_response(files)


def _canonical_uuid(value: Any) -> bool:
    """Whether ``value`` is a UUID in canonical lowercase hyphenated form (newer ComfyUI's
    ``validate_job_id``)."""
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def run(host: str = "127.0.0.1", port: int = 8188, **options: Any) -> None:
    """Serve a simulated ComfyUI on ``host:port`` until SIGINT/SIGTERM (blocking).

    Options: ``output_dir``, ``temp_dir``, ``control_port``, ``announce`` (print one JSON line
    with the URLs once listening: how a parent process learns ports chosen with port 0).
    """
    announce = bool(options.pop("announce", False))
    run_until_signal(SimServer(host, port, **options), announce,
                     lambda srv: f"comfyui-sim listening on {srv.url}",
                     lambda srv: {"url": srv.url, "control_url": srv.control_url, "output_dir": srv.output_dir})


class SimulatorThread(_SimulatorThread):
    """A ComfyUI simulator on its own event loop in a background thread (for in-process tests)."""

    server_class = SimServer
    name = "comfyui-sim"
