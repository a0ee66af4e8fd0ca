"""The simulator's core: ComfyUI's prompt queue, executor, cache and history, on asyncio.

It sends the websocket messages ComfyUI v0.3.64 sends, in the same order (see the recorded
traces in ``tests/data/comfyui-traces``): ``status`` on every queue change, then
``execution_start``, ``execution_cached``, per node ``progress_state`` + ``executing`` (+
``progress``, ``executed``), and ``execution_success`` / ``execution_error`` /
``execution_interrupted``, ``status``, ``executing`` with ``node: null``. As in ComfyUI, the
prompt's /history entry appears only after its last execution message (``HISTORY_LAG``, plus
the ``history_gap`` option: a ComfyUI that unloads its models there takes seconds). The queue
is a heap, and /queue lists it in heap order as ComfyUI does (not sorted). An exception
outside any node stops the executor for good (:class:`~jobqueue.sims.comfyui.execution.ExecutorDied`:
the prompt stays in ``queue_running``, nothing else runs), as ComfyUI's prompt worker thread dies.
One prompt's run (its messages, and what its nodes see of the executor) lives in
:mod:`jobqueue.sims.comfyui.execution`.

Caching follows ComfyUI's classic cache: a node whose input signature matches one from the
previous prompt is not run again; an all-cached prompt finishes in a few milliseconds.

Model loading: an executed ``CheckpointLoaderSimple`` takes the ``load_seconds`` option and
puts its checkpoint at the head of a VRAM LRU (``checkpoint_gb`` each, the least recently used
unloaded when they no longer fit in ``vram_gb``; ``/system_stats`` shows what they use). A
cached loader (same checkpoint as the previous prompt) costs nothing.

Fault switches (``freeze``) live here too: a frozen simulator sends nothing and makes no
progress until it is thawed.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import os
import random
import string
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jobqueue.sims.comfyui.execution import Execution, ExecutorDied
from jobqueue.sims.comfyui.inputs import to_bytes
from jobqueue.sims.comfyui.nodes import Image
from jobqueue.sims.comfyui.options import SimOptions
from jobqueue.sims.comfyui.png import rgb_png, solid_png

log = logging.getLogger(__name__)

#: Sends one text (JSON) or binary message to a client id (None: every client).
Sender = Callable[[Any, "str | None"], Awaitable[None]]

#: Seconds between a prompt's last execution message (``execution_success`` / ``_error`` /
#: ``_interrupted``) and its /history entry. In ComfyUI the executor thread sends that message
#: and only then does the prompt worker write the history (``PromptQueue.task_done``), while the
#: event loop already delivers the message. On a real v0.3.64 that window is short: a client
#: GETting /history the moment ``execution_success`` arrived found ``{}`` for 21 of 200 cached
#: prompts, the connector (slower to react) for 0 of 300; never after ``executing`` with
#: ``node: null``. asyncio cannot wait less than 1 ms without spinning, and 1 ms made the
#: connector hit the window for 19-36% of cached jobs, so the default only yields (the history
#: still follows the message); tests widen the window to look into it.
HISTORY_LAG = 0.0

#: ComfyUI's ``gc_collect_interval`` (``main.py``'s prompt worker): a collection after prompts
#: at most this often, in seconds (see the ``gc_pause`` option).
GC_COLLECT_INTERVAL = 10.0


@dataclass(order=True)
class QueueItem:
    """One queued prompt, ordered like ComfyUI's heap: by number (negative = front)."""

    number: float
    seq: int
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)
    #: Newer ComfyUI: the 6th element, extra_data keys it keeps out of /queue and /history.
    sensitive: dict[str, Any] | None = field(default=None, compare=False)

    def as_list(self) -> list[Any]:
        """The 5-element list /queue and /history show (a newer ComfyUI strips the 6th)."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class Simulator:
    """ComfyUI's queue + executor. All methods run on the server's event loop."""

    def __init__(self, output_dir: str, temp_dir: str, send: Sender, options: SimOptions | None = None,
                 vram_gb: float | None = None, input_dir: str | None = None) -> None:
        self.options = options or SimOptions()
        self.vram_gb = vram_gb
        #: Set when the executor died (an exception outside any node): nothing runs any more.
        self.dead = False
        #: Called by the ``SimCrash`` node: the server dies and restarts empty.
        self.on_crash: Callable[[], None] | None = None
        self.output_dir = output_dir
        self.temp_dir = temp_dir
        self.input_dir = input_dir or os.path.join(os.path.dirname(output_dir), "input")
        #: The folders by kind, as ``folder_paths.get_directory_by_type`` names them.
        self.folders = {"input": self.input_dir, "output": output_dir, "temp": temp_dir}
        self._send = send
        self.queue: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self._seq = 0
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        #: Checkpoints in VRAM, least recently used first (name -> GiB), and loads so far.
        self.loaded: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.loads = 0
        #: Client id of the prompt being executed (gets the execution messages).
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self._interrupt = False
        #: Feature flags each client sent in its ``feature_flags`` handshake, by client id.
        self.client_features: dict[str, dict[str, Any]] = {}
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._wake = asyncio.Event()
        #: ComfyUI's collections after prompts (see :meth:`_collect_garbage`): the last one's
        #: time, whether a prompt ran since, and how many so far.
        self._last_gc, self._need_gc, self.collections = float("-inf"), False, 0
        self._counters: dict[tuple[str, str], int] = {}
        self._temp_prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))

    # -- models ----------------------------------------------------------------------------
    async def load_checkpoint(self, name: str, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Run a checkpoint loader: read the file (``load_seconds``), then hold it in the VRAM
        LRU, unloading the least recently used checkpoints it no longer leaves room for."""
        await sleep(self.options.load_seconds)
        self.loads += 1
        self.loaded.pop(name, None)
        self.loaded[name] = self.options.checkpoint_gb
        room = self.vram_gb if self.vram_gb else self.options.checkpoint_gb
        while len(self.loaded) > 1 and sum(self.loaded.values()) > room:
            self.loaded.popitem(last=False)

    def vram_used_gb(self) -> float:
        """GiB the loaded checkpoints take."""
        return sum(self.loaded.values())

    def counts(self) -> dict[str, Any]:
        """For ``GET /_sim/state``: checkpoints in VRAM (LRU first), loads, collections."""
        return {"loaded": list(self.loaded), "loads": self.loads, "collections": self.collections}

    # -- queue -----------------------------------------------------------------------------
    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + (1 if self.running else 0)}}

    async def send(self, event: str, data: dict[str, Any], sid: str | None = None) -> None:
        """Send one JSON message, waiting while frozen."""
        await self.thawed.wait()
        await self._send({"type": event, "data": data}, sid)

    async def queue_updated(self) -> None:
        await self.send("status", {"status": self.queue_info()})

    async def put(self, prompt_id: str, prompt: dict[str, Any], extra: dict[str, Any], outputs: list[str],
                  number: float) -> None:
        self._seq += 1
        sensitive: dict[str, Any] | None = None
        if self.options.newer:  # server.py after 0.3.64: sensitive keys out, create_time in
            sensitive = {k: extra.pop(k) for k in ("auth_token_comfy_org", "api_key_comfy_org") if k in extra}
            extra["create_time"] = int(time.time() * 1000)
        heapq.heappush(self.queue, QueueItem(number, self._seq, prompt_id, prompt, extra, outputs, sensitive))
        await self.queue_updated()
        self._wake.set()

    def next_number(self, front: bool, given: Any = None) -> float:
        number: float = float(given) if given is not None else self.number  # float when given, as ComfyUI
        if front:
            number = -number
        self.number += 1
        return number

    async def delete(self, prompt_ids: list[str]) -> None:
        self.queue = [item for item in self.queue if item.prompt_id not in set(prompt_ids)]
        heapq.heapify(self.queue)
        await self.queue_updated()

    async def clear(self) -> None:
        self.queue = []
        await self.queue_updated()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is ``prompt_id`` when one is given).

        As in ComfyUI, this only raises a flag: the prompt stops at its next progress update
        or node boundary, so a node sleeping without updates finishes its sleep first."""
        if self.running is None:
            return False
        if prompt_id is not None and self.running.prompt_id != prompt_id:
            return False
        self._interrupt = True
        return True

    async def cancel(self, prompt_id: str) -> bool:
        """Newer ComfyUI's ``POST /api/jobs/{id}/cancel``: interrupt it only if it is still the
        running prompt (atomic), else dequeue it if pending; False for a finished or unknown id."""
        if self.interrupt(prompt_id):
            return True
        if any(item.prompt_id == prompt_id for item in self.queue):
            await self.delete([prompt_id])
            return True
        return False

    def current_queue(self) -> dict[str, Any]:
        """GET /queue: the running prompt, and the pending ones in heap order as ComfyUI lists
        them (its ``get_current_queue`` copies the heap list; only the first is the next)."""
        return {
            "queue_running": [self.running.as_list()] if self.running else [],
            "queue_pending": [item.as_list() for item in self.queue],
        }

    # -- worker ----------------------------------------------------------------------------
    async def worker(self) -> None:
        """Take prompts off the queue one at a time until cancelled on shutdown, or until the
        executor dies (then the prompt stays running and nothing else runs)."""
        while True:
            await self.thawed.wait()
            if not self.queue:
                self._wake.clear()
                try:  # ComfyUI's q.get(timeout=...): it wakes at the next collection's time
                    await asyncio.wait_for(self._wake.wait(), self._gc_due_in())
                except asyncio.TimeoutError:
                    pass
                self._collect_garbage()
                continue
            item = heapq.heappop(self.queue)
            self.running = item
            await self.queue_updated()
            try:
                entry = await self.execute(item)
            except ExecutorDied as exc:
                log.error("comfyui-sim: the executor died on prompt %s: %s; nothing runs until a restart",
                          item.prompt_id, exc)
                self.dead = True
                return
            except Exception:  # a simulator bug must not kill the queue
                traceback.print_exc()
                entry = self._history_entry(item, {}, "error", [])
            await asyncio.sleep(HISTORY_LAG + self.options.history_gap)
            self.history.setdefault(item.prompt_id, entry)
            self.running = None
            await self.queue_updated()
            if item.extra_data.get("client_id") is not None:
                await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.extra_data["client_id"])
            self._need_gc = True
            self._collect_garbage()

    def _gc_due_in(self) -> float | None:
        """Seconds until a pending collection is due (None: none pending)."""
        if not self._need_gc:
            return None
        return max(GC_COLLECT_INTERVAL - (time.monotonic() - self._last_gc), 0.0)

    def _collect_garbage(self) -> None:
        """ComfyUI's ``gc.collect()`` after prompts, at most every :data:`GC_COLLECT_INTERVAL`:
        the ``gc_pause`` option blocks the event loop, as the collection holds ComfyUI's GIL
        (its HTTP server and websockets stall with it)."""
        if not self._need_gc or time.monotonic() - self._last_gc <= GC_COLLECT_INTERVAL:
            return
        if self.options.gc_pause > 0:
            time.sleep(self.options.gc_pause)  # blocking on purpose: the whole server stops
        self._last_gc, self._need_gc = time.monotonic(), False
        self.collections += 1

    def _history_entry(self, item: QueueItem, outputs: dict[str, Any], status: str,
                       messages: list[Any]) -> dict[str, Any]:
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}
        return {
            "prompt": item.as_list(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": meta,
        }

    async def execute(self, item: QueueItem) -> dict[str, Any]:
        """Run one prompt (:class:`Execution`), sending its messages; return its history entry."""
        self.client_id, self.last_prompt_id, self._interrupt = item.extra_data.get("client_id"), item.prompt_id, False
        outputs, status, messages = await Execution(self, item).run()
        # The caller writes /history HISTORY_LAG later (ComfyUI: PromptQueue.task_done).
        return self._history_entry(item, outputs, status, messages)

    def take_interrupt(self) -> bool:
        """Whether the running prompt was interrupted; clears the flag (ComfyUI checks it when a
        node starts, after its ``executing`` message, and at each progress update)."""
        interrupted, self._interrupt = self._interrupt, False
        return interrupted

    async def send_frame(self, frame: bytes, sid: str) -> None:
        """Send one binary frame (a preview), waiting while frozen."""
        await self.thawed.wait()
        await self._send(frame, sid)

    # -- files -----------------------------------------------------------------------------
    def save_images(self, image: Image, kind: str, prefix: str,
                    text: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Write each image of the batch as a real PNG (with ``text`` as tEXt metadata);
        return ComfyUI's UI entries."""
        folder = self.output_dir if kind == "output" else self.temp_dir
        prefix = prefix or self._temp_prefix
        if kind == "temp" and not prefix.startswith("ComfyUI_temp_"):
            prefix = self._temp_prefix
        subfolder, _, base = prefix.rpartition("/")
        target = os.path.join(folder, subfolder)
        os.makedirs(target, exist_ok=True)
        entries = []
        solid = solid_png(image.width, image.height, image.color, text) if image.pixels is None else b""
        for index in range(image.batch_size):
            data = solid if image.pixels is None else rgb_png(image.width, image.height, to_bytes(image.pixels[index]), text)
            counter = self._counters.get((kind, prefix), 0) + 1
            while os.path.exists(os.path.join(target, f"{base}_{counter:05}_.png")):
                counter += 1
            self._counters[(kind, prefix)] = counter
            filename = f"{base}_{counter:05}_.png"
            with open(os.path.join(target, filename), "wb") as fh:
                fh.write(data)
            entries.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return entries
