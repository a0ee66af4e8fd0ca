"""ComfyUI's websocket, kept open in a thread: messages for the connector's prompts, a
reconnect with capped backoff, and the ``feature_flags`` handshake.

:class:`WebSocketListener` owns the socket; :class:`PromptRouter` sorts its messages by
prompt; :class:`Mailbox` carries one prompt's messages from the reader thread to the job's
thread; :class:`Wake` tells a waiting job to look again.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import websocket

log = logging.getLogger(__name__)

#: Reconnect backoff of the websocket: first delay and cap (s).
BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
#: What the connector tells ComfyUI about itself when the websocket opens: it reads preview
#: frames with metadata (binary event 4, naming the prompt), so ComfyUI sends those.
CLIENT_FEATURES = {"supports_preview_metadata": True}

Message = Any  # a decoded JSON message (dict), a binary frame (bytes), or a Wake


class Wake:
    """Tells a waiting job to look again (connection change, cancel)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Mailbox:
    """Messages for one prompt, from the reader thread to the job's thread."""

    def __init__(self) -> None:
        self._items: collections.deque[Message] = collections.deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def put(self, item: Message) -> None:
        with self._lock:
            self._items.append(item)
            self._ready.set()

    def take(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` s for messages; return (and remove) all there are."""
        self._ready.wait(timeout)
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._ready.clear()
        return items


class PromptRouter:
    """Hands each websocket message to the mailbox of the prompt it names (messages without a
    prompt go to every mailbox); keeps a few messages of prompts not registered yet, since a
    fast (cached) prompt can speak before its POST has answered."""

    #: Prompts whose early messages are kept for a late registration.
    UNCLAIMED_MAX = 64

    def __init__(self) -> None:
        self._boxes: dict[str, Mailbox] = {}
        self._unclaimed: collections.OrderedDict[str, list[Message]] = collections.OrderedDict()
        self._jobs: dict[str, Mailbox] = {}
        self._lock = threading.Lock()

    def dispatch(self, message: Message) -> None:
        """``on_message`` of the listener (reader thread)."""
        with self._lock:
            prompt_id = None
            if isinstance(message, dict) and isinstance(message.get("data"), dict):
                prompt_id = message["data"].get("prompt_id")
            if prompt_id is None:
                targets = list(self._boxes.values())
            elif prompt_id in self._boxes:
                targets = [self._boxes[prompt_id]]
            else:
                self._unclaimed.setdefault(prompt_id, []).append(message)
                while len(self._unclaimed) > self.UNCLAIMED_MAX:
                    self._unclaimed.popitem(last=False)
                targets = []
        for box in targets:
            box.put(message)

    def connection_changed(self, connected: bool, reason: str) -> None:
        """``on_connection`` of the listener: wake every waiting prompt."""
        self.wake_all(Wake("connected" if connected else f"disconnected: {reason}"))

    def wake_all(self, wake: Wake) -> None:
        with self._lock:
            targets = list(self._boxes.values())
        for box in targets:
            box.put(wake)

    def register(self, prompt_id: str, box: Mailbox, job_id: str | None = None) -> None:
        """Route ``prompt_id``'s messages (and any that came early) to ``box``; ``job_id``
        makes the box reachable by :meth:`wake_job`."""
        with self._lock:
            self._boxes[prompt_id] = box
            if job_id is not None:
                self._jobs[job_id] = box
            for message in self._unclaimed.pop(prompt_id, []):
                box.put(message)

    def unregister(self, prompt_id: str, job_id: str | None = None) -> None:
        with self._lock:
            self._boxes.pop(prompt_id, None)
            if job_id is not None:
                self._jobs.pop(job_id, None)

    def wake_job(self, job_id: str, reason: str) -> None:
        """Wake the job ``job_id`` if it waits for a prompt."""
        with self._lock:
            box = self._jobs.get(job_id)
        if box is not None:
            box.put(Wake(reason))


class WebSocketListener:
    """Keeps ``/ws?clientId=...`` open in a thread; hands every message to ``on_message``."""

    def __init__(self, url: str, on_message: Callable[[Message], None],
                 on_connection: Callable[[bool, str], None]) -> None:
        self.url = url
        self._on_message = on_message
        self._on_connection = on_connection
        self.connected = threading.Event()
        #: Counts the connections opened so far: a prompt whose end arrived while this number
        #: stayed what it was before its POST got every message ComfyUI sent about it.
        self.generation = 0
        self.last_error = ""
        #: Monotonic time of the last message of any kind (or of connecting).
        self.last_message_at = time.monotonic()
        #: Monotonic time the last connection attempt failed (0: the last one worked).
        self.failed_at = 0.0
        self._stop = threading.Event()
        self._nudged = threading.Event()
        self._ws: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None

    def nudge(self) -> None:
        """Cut the current reconnect delay short (the caller knows the server is back)."""
        self._nudged.set()

    def reopen(self, why: str) -> None:
        """Have the reader thread open a fresh socket (ComfyUI may have dropped this one's
        registration: it stays open but hears nothing).

        Only a close frame is sent: ComfyUI answers it and its handler for the old socket ends
        (dropping the registration) before the reader, having read that answer and paused
        ``BACKOFF_FIRST``, registers the new one, so the reopen cannot silence itself."""
        log.info("comfyui: reopening the websocket to %s: %s", self.url, why)
        ws = self._ws
        if ws is not None:
            try:
                ws.send_close()
            except Exception:  # a broken socket: the reader notices anyway
                pass

    def _pause(self, delay: float) -> None:
        self._nudged.wait(delay)
        self._nudged.clear()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="comfyui-ws", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._nudged.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except Exception:  # closing a broken socket may fail; we are leaving anyway
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                ws = websocket.create_connection(self.url, timeout=3)
            except Exception as exc:
                self.last_error = f"cannot connect to {self.url}: {exc}"
                self.failed_at = time.monotonic()
                self._on_connection(False, self.last_error)
                self._pause(delay)
                delay = min(delay * 2, BACKOFF_CAP)
                continue
            try:
                # ComfyUI reads feature flags only as the socket's first message.
                ws.send(json.dumps({"type": "feature_flags", "data": CLIENT_FEATURES}))
            except Exception as exc:
                self.last_error = f"websocket to {self.url} dropped: {exc}"
                ws.close(timeout=0.2)
                self._pause(delay)
                continue
            self._ws, delay, self.failed_at, self.last_error = ws, BACKOFF_FIRST, 0.0, ""
            self.last_message_at = time.monotonic()
            self.generation += 1
            self.connected.set()
            self._on_connection(True, "")
            try:
                ws.settimeout(0.5)
                while not self._stop.is_set():
                    try:
                        opcode, data = ws.recv_data()
                    except websocket.WebSocketTimeoutException:
                        continue
                    self.last_message_at = time.monotonic()
                    if opcode == websocket.ABNF.OPCODE_TEXT:
                        try:
                            self._on_message(json.loads(data))
                        except ValueError:
                            log.warning("comfyui: undecodable websocket message %r", data[:200])
                    elif opcode == websocket.ABNF.OPCODE_BINARY:
                        self._on_message(bytes(data))
                    elif opcode == websocket.ABNF.OPCODE_CLOSE:
                        raise ConnectionError("server closed the websocket")
            except Exception as exc:
                self.last_error = f"websocket to {self.url} dropped: {exc}"
            finally:
                self._ws = None
                self.connected.clear()
                try:
                    ws.close(timeout=0.2)
                except Exception:  # already broken
                    pass
            if not self._stop.is_set():
                self._on_connection(False, self.last_error)
                self._pause(delay)
