"""ComfyUI's protocol without I/O: follow one prompt's websocket messages, read /history and
/queue answers, and turn ComfyUI's error bodies into clear messages.

Everything here is pure (no sockets, no clocks), so the recorded traces of a real ComfyUI
drive it directly in tests; :mod:`jobqueue.connectors.comfyui.connector` does the I/O around it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Binary websocket frame types (ComfyUI's ``BinaryEventTypes``).
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
PREVIEW_IMAGE_WITH_METADATA = 4

SUCCESS, ERROR, INTERRUPTED = "success", "error", "interrupted"


@dataclass(frozen=True)
class Progress:
    """What the connector reports: a percent from nodes done plus the running node's fraction."""

    percent: float
    node: str | None
    node_type: str | None
    step: int
    total_steps: int
    nodes_done: int
    nodes_total: int

    @property
    def message(self) -> str:
        if self.node is None:
            return f"{self.nodes_done}/{self.nodes_total} nodes done"
        label = f"node {self.node} ({self.node_type})" if self.node_type else f"node {self.node}"
        if self.total_steps:
            return f"{label} step {self.step}/{self.total_steps}"
        return f"{label} running; {self.nodes_done}/{self.nodes_total} nodes done"


class PromptTracker:
    """The state of one prompt as its websocket messages describe it.

    Feed every message the socket delivers (:meth:`feed`, :meth:`feed_binary`); messages of
    other prompts are ignored. ``finished`` turns true on ``execution_success`` /
    ``execution_error`` / ``execution_interrupted`` or ``executing`` with ``node: null``;
    the caller still confirms the outcome through GET /history/{prompt_id}.
    """

    def __init__(self, prompt_id: str, workflow: Mapping[str, Any] | None = None) -> None:
        self.prompt_id = prompt_id
        self.class_types = {str(k): str(v.get("class_type")) for k, v in (workflow or {}).items() if isinstance(v, Mapping)}
        self.started = False
        #: ``execution_start`` arrived: the socket carried the prompt's messages from the first.
        self.opened = False
        self.ended = False
        self.outcome: str | None = None
        #: The execution_error / execution_interrupted payload, when there was one.
        self.error: dict[str, Any] | None = None
        self.cached: set[str] = set()
        self.done: set[str] = set()
        self.running: str | None = None
        self.value = 0.0
        self.maximum = 0.0
        #: UI outputs announced by ``executed`` messages, by node id.
        self.outputs: dict[str, Any] = {}
        #: ``execution_error`` messages of type ``ExecutionBlocked``: a node whose input was
        #: blocked (ComfyUI's ``ExecutionBlocker``); the prompt goes on without its outputs.
        self.blocked: list[dict[str, Any]] = []
        #: The latest preview image (bytes of a PNG/JPEG) and its MIME type.
        self.preview: bytes | None = None
        self.preview_type: str | None = None
        self._percent = 0.0

    @property
    def finished(self) -> bool:
        return self.ended or self.outcome is not None

    def feed(self, message: Mapping[str, Any]) -> bool:
        """Apply one JSON message; return True when it was about this prompt."""
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, Mapping):
            return False
        prompt_id = data.get("prompt_id")
        if prompt_id is None:
            # After a reconnect ComfyUI repeats the running node without a prompt id.
            if kind == "executing" and data.get("node") is not None and self.started and not self.finished:
                self._enter(str(data["node"]))
            return False
        if prompt_id != self.prompt_id:
            return False
        if kind == "execution_start":
            self.started = self.opened = True
        elif kind == "execution_cached":
            self.started = True
            nodes = {str(n) for n in data.get("nodes") or ()}
            self.cached |= nodes
            self.done |= nodes
        elif kind == "executing":
            self.started = True
            node = data.get("node")
            if node is None:
                self._leave()
                self.ended = True
            else:
                self._enter(str(node))
        elif kind == "progress":
            self.started = True
            node = data.get("node")
            if node is not None:
                self._enter(str(node))
            self._set_fraction(data.get("value"), data.get("max"))
        elif kind == "progress_state":
            self.started = True
            for node_id, info in (data.get("nodes") or {}).items():
                if not isinstance(info, Mapping):
                    continue
                if info.get("state") == "finished":
                    self.done.add(str(node_id))
                elif info.get("state") == "running" and str(node_id) == self.running:
                    self._set_fraction(info.get("value"), info.get("max"))
        elif kind == "executed":
            node = str(data.get("node"))
            self.done.add(node)
            if data.get("output") is not None:
                self.outputs[node] = data["output"]
        elif kind == "execution_success":
            self.outcome = SUCCESS
        elif kind == "execution_error" and data.get("exception_type") == "ExecutionBlocked":
            self.blocked.append(dict(data))  # not an end: ComfyUI goes on and reaches execution_success
        elif kind == "execution_error":
            self.outcome, self.error = ERROR, dict(data)
        elif kind == "execution_interrupted":
            self.outcome, self.error = INTERRUPTED, dict(data)
        return True

    def feed_binary(self, frame: bytes) -> bool:
        """Keep a binary preview frame as the latest preview; return True when it was ours."""
        if len(frame) < 8:
            return False
        event = struct.unpack(">I", frame[:4])[0]
        if event == PREVIEW_IMAGE:
            image_type = struct.unpack(">I", frame[4:8])[0]
            # Legacy frames carry no prompt id; ComfyUI sends them only to the running prompt's client.
            if not self.started or self.finished:
                return False
            self.preview, self.preview_type = frame[8:], "image/png" if image_type == 2 else "image/jpeg"
            return True
        if event == PREVIEW_IMAGE_WITH_METADATA:
            size = struct.unpack(">I", frame[4:8])[0]
            try:
                meta = json.loads(frame[8:8 + size])
            except ValueError:
                return False
            if not isinstance(meta, dict) or meta.get("prompt_id") != self.prompt_id:
                return False
            self.preview, self.preview_type = frame[8 + size:], str(meta.get("image_type") or "image/png")
            return True
        return False

    def _enter(self, node: str) -> None:
        if node == self.running:
            return
        self._leave()
        self.running, self.value, self.maximum = node, 0.0, 0.0

    def _leave(self) -> None:
        if self.running is not None:
            self.done.add(self.running)
        self.running = None

    def _set_fraction(self, value: Any, maximum: Any) -> None:
        if isinstance(value, (int, float)) and isinstance(maximum, (int, float)) and maximum > 0:
            self.value, self.maximum = float(value), float(maximum)

    def progress(self) -> Progress:
        """Progress so far: monotonic, 100 only after ``execution_success``."""
        total = max(len(self.class_types), len(self.done | ({self.running} if self.running else set())), 1)
        done = len(self.done - {self.running}) if self.running else len(self.done)
        fraction = 0.0
        if self.running is not None and self.maximum > 0:
            fraction = min(self.value / self.maximum, 1.0)
        percent = 100.0 * min((done + fraction) / total, 1.0)
        percent = 100.0 if self.outcome == SUCCESS else min(percent, 99.9)
        self._percent = max(self._percent, round(percent, 2))
        steps = self.running is not None and self.maximum > 0
        return Progress(
            percent=self._percent,
            node=self.running,
            node_type=self.class_types.get(self.running) if self.running else None,
            step=int(self.value) if steps else 0,
            total_steps=int(self.maximum) if steps else 0,
            nodes_done=min(done, total),
            nodes_total=total,
        )


# -- REST answers ------------------------------------------------------------------------------
def history_entry(body: Any, prompt_id: str) -> dict[str, Any] | None:
    """The prompt's entry in a GET /history/{id} answer (``{}`` until the prompt ended)."""
    if isinstance(body, Mapping):
        entry = body.get(prompt_id)
        if isinstance(entry, dict):
            return entry
    return None


def outcome_from_history(entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(success|error|interrupted, data)`` from a history entry; ``data`` is the error or
    interrupt message payload (empty on success)."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    for item in reversed(messages):
        if isinstance(item, (list, tuple)) and len(item) == 2:
            if item[0] == "execution_error":
                return ERROR, dict(item[1])
            if item[0] == "execution_interrupted":
                return INTERRUPTED, dict(item[1])
    if status.get("status_str") == "success" or status.get("completed") is True:
        return SUCCESS, {}
    return ERROR, {"exception_message": f"ComfyUI reported status {status.get('status_str')!r}"}


def queue_position(body: Any, prompt_id: str) -> str | None:
    """``running``, ``pending`` or None (not in ComfyUI's queue) from a GET /queue answer."""
    if not isinstance(body, Mapping):
        return None
    for key, where in (("queue_running", "running"), ("queue_pending", "pending")):
        for item in body.get(key) or ():
            if isinstance(item, (list, tuple)) and len(item) > 1 and item[1] == prompt_id:
                return where
    return None


def queue_snapshot(body: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The prompt ids running and pending: a change between two polls is a sign of life."""
    if not isinstance(body, Mapping):
        return (), ()

    def ids(key: str) -> tuple[str, ...]:
        return tuple(str(i[1]) for i in body.get(key) or () if isinstance(i, (list, tuple)) and len(i) > 1)

    return ids("queue_running"), ids("queue_pending")


def output_files(outputs: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every file an output node reported (images, gifs, audio...): node, filename, subfolder, type."""
    files = []
    for node, output in outputs.items():
        if not isinstance(output, Mapping):
            continue
        for items in output.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    files.append({"node": str(node), "filename": item["filename"],
                                  "subfolder": str(item.get("subfolder") or ""), "type": str(item.get("type") or "output")})
    return files


# -- errors ------------------------------------------------------------------------------------
def describe_validation_error(body: Any) -> tuple[str, dict[str, Any]]:
    """A clear message and the details from a 400 answer to POST /prompt.

    The message names ComfyUI's error type, and for each failing node its id, class and the
    offending input: ``value_bigger_than_max on node 1 (EmptyImage) input 'width': ...``.
    """
    body = body if isinstance(body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), Mapping) else {}
    kind = str(error.get("type") or "invalid_prompt")
    parts = [f"ComfyUI rejected the workflow: {kind}: {error.get('message') or 'invalid prompt'}"]
    if error.get("details"):
        parts[0] += f" ({error['details']})"
    for node_id, info in node_errors.items():
        if not isinstance(info, Mapping):
            continue
        for err in info.get("errors") or ():
            if not isinstance(err, Mapping):
                continue
            extra: Mapping[str, Any] = err["extra_info"] if isinstance(err.get("extra_info"), Mapping) else {}
            where = f"node {node_id} ({info.get('class_type')})"
            if extra.get("input_name"):
                where += f" input '{extra['input_name']}'"
            parts.append(f"{err.get('type')} on {where}: {err.get('message')}"
                         + (f" [{err.get('details')}]" if err.get("details") else ""))
    details = {"type": kind, "message": error.get("message"), "details": error.get("details"),
               "node_errors": dict(node_errors)}
    return "; ".join(parts), details


def describe_execution_error(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A clear message and details from an ``execution_error`` payload."""
    message = str(data.get("exception_message") or "").strip()
    text = (f"node {data.get('node_id')} ({data.get('node_type')}) raised "
            f"{data.get('exception_type')}: {message}")
    details = {k: data.get(k) for k in ("prompt_id", "node_id", "node_type", "exception_type", "executed")}
    details["exception_message"] = message
    details["traceback"] = list(data.get("traceback") or [])[-5:]
    return text, details
