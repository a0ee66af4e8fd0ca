"""The simulator's core: ComfyUI's prompt queue, executor, cache and history, on asyncio.

It sends the websocket messages ComfyUI v0.3.64 sends, in the same order (see the recorded
traces in ``tests/data/comfyui-traces``): ``status`` on every queue change, then
``execution_start``, ``execution_cached``, per node ``progress_state`` + ``executing`` (+
``progress``, ``executed``), and ``execution_success`` / ``execution_error`` /
``execution_interrupted``, ``status``, ``executing`` with ``node: null``. As in ComfyUI, the
prompt's /history entry appears only after its last execution message (``HISTORY_LAG``).

Caching follows ComfyUI's classic cache: a node whose input signature matches one from the
previous prompt is not run again; an all-cached prompt finishes in a few milliseconds.

Fault switches (``freeze``) live here too: a frozen simulator sends nothing and makes no
progress until it is thawed.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import random
import string
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jobqueue.sims.comfyui.nodes import NODES, Image
from jobqueue.sims.comfyui.png import solid_png

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


def now_ms() -> int:
    return int(time.time() * 1000)


class ProcessingInterruptedError(Exception):
    """The running prompt was interrupted (POST /interrupt)."""


@dataclass(order=True)
class QueueItem:
    """One queued prompt, ordered like ComfyUI's heap: by number (negative = front)."""

    number: float
    seq: int
    prompt_id: str = field(compare=False)
    prompt: dict[str, Any] = field(compare=False)
    extra_data: dict[str, Any] = field(compare=False)
    outputs: list[str] = field(compare=False)

    def as_list(self) -> list[Any]:
        """The 5-element list /queue and /history show."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


def signatures(prompt: dict[str, Any]) -> dict[str, str]:
    """Input signature of every node: class, literal inputs and upstream signatures."""
    sigs: dict[str, str] = {}

    def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
        if node_id in sigs:
            return sigs[node_id]
        node = prompt[node_id]
        parts: dict[str, Any] = {}
        for name, value in sorted(node.get("inputs", {}).items()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and str(value[0]) not in trail:
                parts[name] = ["link", sig(str(value[0]), (*trail, node_id)), value[1]]
            else:
                parts[name] = value
        sigs[node_id] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return sigs[node_id]

    for node_id in prompt:
        sig(node_id)
    return sigs


class Simulator:
    """ComfyUI's queue + executor. All methods run on the server's event loop."""

    def __init__(self, output_dir: str, temp_dir: str, send: Sender) -> None:
        self.output_dir = output_dir
        self.temp_dir = temp_dir
        self._send = send
        self.queue: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.number = 0
        self._seq = 0
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
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
        self._counters: dict[tuple[str, str], int] = {}
        self._temp_prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))

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
        heapq.heappush(self.queue, QueueItem(number, self._seq, prompt_id, prompt, extra, outputs))
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

    def current_queue(self) -> dict[str, Any]:
        return {
            "queue_running": [self.running.as_list()] if self.running else [],
            "queue_pending": [item.as_list() for item in sorted(self.queue)],
        }

    # -- worker ----------------------------------------------------------------------------
    async def worker(self) -> None:
        """Take prompts off the queue one at a time, forever (cancelled on shutdown)."""
        while True:
            await self.thawed.wait()
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = heapq.heappop(self.queue)
            self.running = item
            await self.queue_updated()
            try:
                entry = await self.execute(item)
            except Exception:  # a simulator bug must not kill the queue
                traceback.print_exc()
                entry = self._history_entry(item, {}, "error", [])
            await asyncio.sleep(HISTORY_LAG)
            self.history.setdefault(item.prompt_id, entry)
            self.running = None
            await self.queue_updated()
            if item.extra_data.get("client_id") is not None:
                await self.send("executing", {"node": None, "prompt_id": item.prompt_id}, item.extra_data["client_id"])

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
        """Run one prompt, sending its messages; return its history entry."""
        pid, prompt = item.prompt_id, item.prompt
        client = item.extra_data.get("client_id")
        self.client_id, self.last_prompt_id, self._interrupt = client, pid, False
        messages: list[Any] = []

        async def tell(event: str, data: dict[str, Any], keep: bool = False) -> None:
            if keep:
                messages.append([event, data])
            if client is not None:
                await self.send(event, data, client)

        await tell("execution_start", {"prompt_id": pid, "timestamp": now_ms()}, keep=True)
        sigs = signatures(prompt)
        cached = [n for n in prompt if sigs[n] in self.cache]
        await tell("execution_cached", {"nodes": cached, "prompt_id": pid, "timestamp": now_ms()}, keep=True)
        results: dict[str, tuple[Any, ...]] = {n: self.cache[sigs[n]][0] for n in cached}
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []
        registry: dict[str, dict[str, Any]] = {}
        new_cache = {sigs[n]: self.cache[sigs[n]] for n in cached}

        def state(node: str, value: float, maximum: float, status: str) -> None:
            registry[node] = {"value": value, "max": maximum, "state": status, "node_id": node, "prompt_id": pid,
                              "display_node_id": node, "parent_node_id": None, "real_node_id": node}

        async def progress_state() -> None:
            await tell("progress_state", {"prompt_id": pid, "nodes": {k: dict(v) for k, v in registry.items()}})

        status = "success"
        try:
            for node_id in self._order(prompt, item.outputs, set(cached)):
                if self._interrupt:  # ComfyUI checks (and clears) the flag before each node
                    self._interrupt = False
                    raise ProcessingInterruptedError()
                class_type = prompt[node_id]["class_type"]
                if node_id in results:  # a cached output node: report its cached UI
                    ui = self.cache[sigs[node_id]][1]
                    if ui is not None:
                        ui_outputs[node_id] = ui
                        await tell("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid})
                    state(node_id, 1, 1, "finished")
                    await progress_state()
                    executed.append(node_id)
                    continue
                state(node_id, 0.0, 1.0, "running")
                await progress_state()
                await tell("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                self.last_node_id = node_id
                inputs = {}
                for name, value in prompt[node_id].get("inputs", {}).items():
                    if isinstance(value, list) and len(value) == 2 and str(value[0]) in results:
                        inputs[name] = results[str(value[0])][value[1]]
                    elif NODES[class_type].input_spec(name) is not None:
                        inputs[name] = value
                hidden = NODES[class_type].hidden
                if "prompt" in hidden:
                    inputs["prompt"] = prompt
                if "extra_pnginfo" in hidden:
                    inputs["extra_pnginfo"] = item.extra_data.get("extra_pnginfo")
                ctx = _Context(self, pid, node_id, state, progress_state, tell)
                try:
                    outputs, ui = await NODES[class_type].run(ctx, **inputs)
                except ProcessingInterruptedError:
                    await tell("execution_interrupted", {"prompt_id": pid, "node_id": node_id, "node_type": class_type,
                                                         "executed": list(executed), "timestamp": now_ms()}, keep=True)
                    status = "error"
                    break
                except Exception as exc:
                    await tell("execution_error", {
                        "prompt_id": pid, "node_id": node_id, "node_type": class_type, "executed": list(executed),
                        "exception_message": f"{exc}\n", "exception_type": type(exc).__name__,
                        "traceback": traceback.format_tb(exc.__traceback__),
                        "current_inputs": {k: [repr(v)] for k, v in inputs.items()},
                        "current_outputs": list(prompt), "timestamp": now_ms()}, keep=True)
                    status = "error"
                    break
                results[node_id] = outputs
                new_cache[sigs[node_id]] = (outputs, ui)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    await tell("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid})
                done = registry[node_id]
                state(node_id, done["max"], done["max"], "finished")
                await progress_state()
                executed.append(node_id)
        except ProcessingInterruptedError:
            last = self.last_node_id
            await tell("execution_interrupted", {"prompt_id": pid, "node_id": last,
                                                 "node_type": prompt[last]["class_type"] if last in prompt else None,
                                                 "executed": list(executed), "timestamp": now_ms()}, keep=True)
            status = "error"
        # Classic cache: keep only what this prompt produced or reused.
        self.cache = new_cache
        if status == "success":
            messages.append(["execution_success", {"prompt_id": pid, "timestamp": now_ms()}])
            if client is not None:
                await self.send("execution_success", messages[-1][1], client)
        # The caller writes /history HISTORY_LAG later (ComfyUI: PromptQueue.task_done).
        return self._history_entry(item, ui_outputs, status, messages)

    @staticmethod
    def _order(prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        """Nodes to visit, upstream first: every output, plus uncached nodes they need."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            if node_id not in cached:
                for value in prompt[node_id].get("inputs", {}).values():
                    if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                        visit(str(value[0]))
            order.append(node_id)

        for out in sorted(outputs, key=_node_key):
            visit(out)
        return order

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
        data = solid_png(image.width, image.height, image.color, text)
        entries = []
        for _ in range(image.batch_size):
            counter = self._counters.get((kind, prefix), 0) + 1
            while os.path.exists(os.path.join(target, f"{base}_{counter:05}_.png")):
                counter += 1
            self._counters[(kind, prefix)] = counter
            filename = f"{base}_{counter:05}_.png"
            with open(os.path.join(target, filename), "wb") as fh:
                fh.write(data)
            entries.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return entries

    def file_path(self, filename: str, subfolder: str, kind: str) -> str | None:
        """The local path /view serves, or None when the request is unsafe or unknown."""
        base = {"output": self.output_dir, "temp": self.temp_dir}.get(kind)
        if base is None or not filename or "/" in filename or "\\" in filename or filename.startswith("."):
            return None
        root = os.path.realpath(base)
        path = os.path.realpath(os.path.join(root, subfolder, filename))
        if os.path.commonpath([root, path]) != root:
            return None
        return path


def _node_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


class _Context:
    """What a running node sees of the executor (progress, interrupt-aware sleep, files)."""

    def __init__(self, sim: Simulator, prompt_id: str, node_id: str, state: Any, progress_state: Any, tell: Any) -> None:
        self._sim, self._pid, self._node = sim, prompt_id, node_id
        self._state, self._progress_state, self._tell = state, progress_state, tell

    async def sleep(self, seconds: float) -> None:
        """Sleep like a node's own ``time.sleep``: deaf to interrupts, stopped by a freeze."""
        end = time.monotonic() + seconds
        while True:
            await self._sim.thawed.wait()
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def progress(self, value: int, maximum: int, preview: Image | None = None) -> None:
        """ComfyUI's progress hook (``main.hijack_progress``): raise if interrupted (and clear
        the flag), then ``progress_state``, a metadata preview (event 4) for clients that
        announced ``supports_preview_metadata``, ``progress``, else a legacy preview (event 1)."""
        if self._sim._interrupt:
            self._sim._interrupt = False
            raise ProcessingInterruptedError()
        self._state(self._node, value, maximum, "running")
        await self._progress_state()
        client = self._sim.client_id
        metadata = client is not None and self._sim.client_features.get(client, {}).get("supports_preview_metadata") is True
        if preview is not None and metadata:
            await self._send_preview(preview, metadata=True)
        await self._tell("progress", {"value": value, "max": maximum, "prompt_id": self._pid, "node": self._node})
        if preview is not None and not metadata:
            await self._send_preview(preview, metadata=False)

    async def _send_preview(self, image: Image, metadata: bool) -> None:
        """One binary preview frame as ``server.send_image`` / ``send_image_with_metadata``
        build it: event 1 + image type (2 = PNG) + bytes, or event 4 + metadata length +
        metadata JSON + bytes."""
        client = self._sim.client_id
        if client is None:
            return
        data = solid_png(image.width, image.height, image.color)
        if metadata:
            meta = json.dumps({"node_id": self._node, "prompt_id": self._pid, "display_node_id": self._node,
                               "parent_node_id": None, "real_node_id": self._node, "image_type": "image/png"}).encode()
            frame = (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + data
        else:
            frame = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + data
        await self._sim.thawed.wait()
        await self._sim._send(frame, client)

    def save_images(self, image: Image, kind: str, prefix: str,
                    text: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self._sim.save_images(image, kind, prefix, text)
