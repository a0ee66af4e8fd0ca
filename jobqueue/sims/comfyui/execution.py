"""One prompt's run on the simulated executor (ComfyUI's ``PromptExecutor.execute``).

:class:`Execution` sends the prompt's messages in ComfyUI's order: ``execution_start``,
``execution_cached``, then per node (upstream first) ``progress_state`` + ``executing`` (+
``progress``, ``executed``), and ``execution_success`` / ``execution_error`` /
``execution_interrupted``. It keeps the messages the /history entry lists and the UI outputs;
:class:`~jobqueue.sims.comfyui.engine.Simulator` writes that entry. A node sees the executor
through :class:`_Context` (progress, sleep, files).

As in ComfyUI v0.3.64:

* the interrupt flag is checked when a node starts, *after* its ``executing`` message (and at
  each progress update), so ``execution_interrupted`` names the node being run, and a last
  node that reports no progress is never interrupted: the prompt succeeds;
* a node whose input is blocked (``ExecutionBlocker`` with a message) makes the executor send
  an ``execution_error`` of type ``ExecutionBlocked`` naming that node, not kept in the
  history; its outputs are blocked silently downstream and the prompt still reaches
  ``execution_success``;
* every node's cache key reads its ``inputs``: a node without them, even one no output needs,
  raises ``KeyError`` in the executor thread after ``execution_start``
  (:class:`ExecutorDied`); nothing runs any more;
* an exception's type is written module-qualified (``torch.OutOfMemoryError``) and an
  out-of-memory message gets ComfyUI's tips. A node runs out of memory when the simulated GPU
  (``vram_gb``) is smaller than what its images need (:mod:`jobqueue.sims.vram`: the largest
  image batch among its inputs, or its own ``width`` × ``height`` × ``batch_size``), or when
  ``oom_next`` asks for it.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

from jobqueue.sims.comfyui.nodes import NODES, Blocker, Image
from jobqueue.sims.comfyui.options import OOM_TIPS, OutOfMemoryError, full_type_name, out_of_memory
from jobqueue.sims.comfyui.png import solid_png
from jobqueue.sims.vram import vram_needed_gb

if TYPE_CHECKING:
    from jobqueue.sims.comfyui.engine import QueueItem, Simulator


def now_ms() -> int:
    return int(time.time() * 1000)


class ProcessingInterruptedError(Exception):
    """The running prompt was interrupted (POST /interrupt)."""


class ExecutorDied(Exception):
    """The executor raised outside any node (ComfyUI's prompt worker thread has no try there):
    nothing more runs until a restart."""


def signatures(prompt: dict[str, Any], folders: dict[str, str] | None = None) -> dict[str, str]:
    """Input signature of every node: class, literal inputs, upstream signatures and what the
    node's ``IS_CHANGED`` says (``LoadImage``: the file's hash, so a changed file runs again)."""
    sigs: dict[str, str] = {}

    def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
        if node_id in sigs:
            return sigs[node_id]
        node = prompt[node_id]
        parts: dict[str, Any] = {}
        for name, value in sorted(node["inputs"].items()):  # KeyError without inputs, as ComfyUI's cache keys
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and str(value[0]) not in trail:
                parts[name] = ["link", sig(str(value[0]), (*trail, node_id)), value[1]]
            else:
                parts[name] = value
        node_def = NODES.get(node["class_type"])
        if node_def is not None and node_def.is_changed is not None:
            parts["$is_changed"] = node_def.is_changed(folders or {}, node["inputs"])
        sigs[node_id] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return sigs[node_id]

    for node_id in prompt:
        sig(node_id)
    return sigs


def visit_order(prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
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


def _node_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


class Execution:
    """One prompt's run: its messages, its nodes' results and progress, its outputs."""

    def __init__(self, sim: Simulator, item: QueueItem) -> None:
        self.sim, self.item = sim, item
        self.pid, self.prompt = item.prompt_id, item.prompt
        self.client: str | None = item.extra_data.get("client_id")
        #: The messages the /history entry lists (``status.messages``).
        self.messages: list[Any] = []
        #: Every node's input signature, and the nodes the cache holds (found at the start).
        self.sigs: dict[str, str] = {}
        self.cached: list[str] = []
        #: Each node's outputs, cached or run.
        self.results: dict[str, tuple[Any, ...]] = {}
        self.ui_outputs: dict[str, Any] = {}
        self.executed: list[str] = []
        #: Each node's progress as ``progress_state`` reports it.
        self.registry: dict[str, dict[str, Any]] = {}
        #: The cache after this prompt: what it reused and what it produced.
        self.new_cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}

    async def run(self) -> tuple[dict[str, Any], str, list[Any]]:
        """Run the prompt; return its UI outputs, its status (``success``/``error``) and messages."""
        await self._start()
        status = "success"
        try:
            for node_id in visit_order(self.prompt, self.item.outputs, set(self.cached)):
                if not await self._visit(node_id):
                    status = "error"
                    break
        except ProcessingInterruptedError:
            await self._interrupted(self.sim.last_node_id)
            status = "error"
        # Classic cache: keep only what this prompt produced or reused.
        self.sim.cache = self.new_cache
        if status == "success":
            self.messages.append(["execution_success", {"prompt_id": self.pid, "timestamp": now_ms()}])
            if self.client is not None:
                await self.sim.send("execution_success", self.messages[-1][1], self.client)
        return self.ui_outputs, status, self.messages

    async def _start(self) -> None:
        """``execution_start``, then the nodes whose signature the cache holds (``execution_cached``)."""
        await self.tell("execution_start", {"prompt_id": self.pid, "timestamp": now_ms()}, keep=True)
        cache = self.sim.cache
        try:
            self.sigs = signatures(self.prompt, self.sim.folders)
        except KeyError as exc:
            raise ExecutorDied(f"KeyError {exc} while building cache keys") from exc
        self.cached = [n for n in self.prompt if self.sigs[n] in cache]
        await self.tell("execution_cached", {"nodes": self.cached, "prompt_id": self.pid, "timestamp": now_ms()},
                        keep=True)
        self.results = {n: cache[self.sigs[n]][0] for n in self.cached}
        self.new_cache = {self.sigs[n]: cache[self.sigs[n]] for n in self.cached}

    # -- what nodes and the context call -------------------------------------------------------
    async def tell(self, event: str, data: dict[str, Any], keep: bool = False) -> None:
        """Send one message to the prompt's client (``keep``: list it in the history too)."""
        if keep:
            self.messages.append([event, data])
        if self.client is not None:
            await self.sim.send(event, data, self.client)

    def state(self, node: str, value: float, maximum: float, status: str) -> None:
        """Note a node's progress for the next ``progress_state``."""
        self.registry[node] = {"value": value, "max": maximum, "state": status, "node_id": node,
                               "prompt_id": self.pid, "display_node_id": node, "parent_node_id": None,
                               "real_node_id": node}

    async def progress_state(self) -> None:
        await self.tell("progress_state", {"prompt_id": self.pid,
                                           "nodes": {k: dict(v) for k, v in self.registry.items()}})

    # -- one node --------------------------------------------------------------------------------
    async def _visit(self, node_id: str) -> bool:
        """Run (or reuse) one node; False when it failed or was interrupted (the prompt ends)."""
        if node_id in self.results:
            await self._reuse(node_id)
            return True
        class_type = self.prompt[node_id]["class_type"]
        self.state(node_id, 0.0, 1.0, "running")
        await self.progress_state()
        await self.tell("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.pid})
        self.sim.last_node_id = node_id
        inputs = self._inputs(node_id, class_type)
        try:
            if self.sim.take_interrupt():  # ComfyUI: before_node_execution(), after "executing"
                raise ProcessingInterruptedError()
            outputs, ui = await self._call(node_id, class_type, inputs)
        except ProcessingInterruptedError:
            await self._interrupted(node_id)
            return False
        except Exception as exc:
            await self._failed(node_id, class_type, exc, inputs)
            return False
        self.results[node_id] = outputs
        self.new_cache[self.sigs[node_id]] = (outputs, ui)
        if ui is not None:
            self.ui_outputs[node_id] = ui
            await self.tell("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.pid})
        done = self.registry[node_id]
        self.state(node_id, done["max"], done["max"], "finished")
        await self.progress_state()
        self.executed.append(node_id)
        return True

    async def _call(self, node_id: str, class_type: str, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
        """The node's outputs and UI: blocked when an input is (ComfyUI's ``execution_block_cb``:
        an ``execution_error`` naming this node for a blocker with a message), an out-of-memory
        error when the simulator was told to raise one, else what the node returns."""
        blocker = next((v for v in inputs.values() if isinstance(v, Blocker)), None)
        if blocker is not None:
            if blocker.message is not None:
                # Sent directly (send_sync), not through add_message: the history never lists it.
                await self.tell("execution_error", {
                    "prompt_id": self.pid, "node_id": node_id, "node_type": class_type,
                    "executed": list(self.executed), "exception_message": f"Execution Blocked: {blocker.message}",
                    "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
                    "current_outputs": []})
            return tuple(Blocker(None) for _ in NODES[class_type].outputs), None
        if self.sim.options.oom_next > 0:
            self.sim.options.oom_next -= 1
            raise out_of_memory(vram_gib=self.sim.vram_gb)
        needed = _vram_needed(inputs)
        if self.sim.vram_gb and needed > self.sim.vram_gb:
            raise out_of_memory(needed, self.sim.vram_gb)
        return await NODES[class_type].run(_Context(self, node_id), **inputs)

    async def _reuse(self, node_id: str) -> None:
        """A cached output node: report its cached UI (not before 0.3: ``older``), run nothing."""
        ui = self.sim.cache[self.sigs[node_id]][1]
        if ui is not None:
            self.ui_outputs[node_id] = ui
        if ui is not None and not self.sim.options.older:
            await self.tell("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.pid})
        self.state(node_id, 1, 1, "finished")
        await self.progress_state()
        self.executed.append(node_id)

    def _inputs(self, node_id: str, class_type: str) -> dict[str, Any]:
        """The node's arguments: upstream results for links, literals it declares, hidden inputs."""
        inputs = {}
        for name, value in self.prompt[node_id].get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in self.results:
                inputs[name] = self.results[str(value[0])][value[1]]
            elif NODES[class_type].input_spec(name) is not None:
                inputs[name] = value
        hidden = NODES[class_type].hidden
        if "prompt" in hidden:
            inputs["prompt"] = self.prompt
        if "extra_pnginfo" in hidden:
            inputs["extra_pnginfo"] = self.item.extra_data.get("extra_pnginfo")
        return inputs

    async def _interrupted(self, node_id: str | None) -> None:
        node_type = self.prompt[node_id]["class_type"] if node_id in self.prompt else None
        await self.tell("execution_interrupted", {"prompt_id": self.pid, "node_id": node_id, "node_type": node_type,
                                                  "executed": list(self.executed), "timestamp": now_ms()}, keep=True)

    async def _failed(self, node_id: str, class_type: str, exc: Exception, inputs: dict[str, Any]) -> None:
        await self.tell("execution_error", {
            "prompt_id": self.pid, "node_id": node_id, "node_type": class_type, "executed": list(self.executed),
            "exception_message": f"{exc}\n{OOM_TIPS if isinstance(exc, OutOfMemoryError) else ''}",
            "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": {k: [repr(v)] for k, v in inputs.items()},
            "current_outputs": list(self.prompt), "timestamp": now_ms()}, keep=True)


def _vram_needed(inputs: dict[str, Any]) -> float:
    """GB a node needs (:mod:`jobqueue.sims.vram`): its largest image batch, or the size it makes."""
    sizes = [(v.width, v.height, v.batch_size) for v in inputs.values() if isinstance(v, Image)]
    width, height = inputs.get("width"), inputs.get("height")
    if isinstance(width, int) and isinstance(height, int):
        batch = inputs.get("batch_size")
        sizes.append((width, height, batch if isinstance(batch, int) else 1))
    return max((vram_needed_gb(*size) for size in sizes), default=0.0)


class _Context:
    """What a running node sees of the executor (progress, interrupt-aware sleep, files)."""

    def __init__(self, run: Execution, node_id: str) -> None:
        self._run, self._sim, self._pid, self._node = run, run.sim, run.pid, node_id
        self.folders = run.sim.folders

    async def sleep(self, seconds: float) -> None:
        """Sleep like a node's own ``time.sleep``: deaf to interrupts, stopped by a freeze."""
        end = time.monotonic() + seconds
        while True:
            await self._sim.thawed.wait()
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def load_checkpoint(self, name: str) -> None:
        """Load a checkpoint (``load_seconds``, the VRAM LRU: see the engine)."""
        await self._sim.load_checkpoint(name, self.sleep)

    async def progress(self, value: int, maximum: int, preview: Image | None = None) -> None:
        """ComfyUI's progress hook (``main.hijack_progress``): raise if interrupted (and clear
        the flag), then ``progress_state``, a metadata preview (event 4) for clients that
        announced ``supports_preview_metadata``, ``progress``, else a legacy preview (event 1)."""
        if self._sim.take_interrupt():
            raise ProcessingInterruptedError()
        self._run.state(self._node, value, maximum, "running")
        await self._run.progress_state()
        client = self._sim.client_id
        metadata = client is not None and self._sim.client_features.get(client, {}).get("supports_preview_metadata") is True
        if preview is not None and metadata:
            await self._send_preview(preview, metadata=True)
        await self._run.tell("progress", {"value": value, "max": maximum, "prompt_id": self._pid, "node": self._node})
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
        await self._sim.send_frame(frame, client)

    def save_images(self, image: Image, kind: str, prefix: str,
                    text: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self._sim.save_images(image, kind, prefix, text)

    async def crash(self) -> None:
        """Take the server down (it cuts this prompt's run too); never returns."""
        if self._sim.on_crash is not None:
            self._sim.on_crash()
        await asyncio.Event().wait()
