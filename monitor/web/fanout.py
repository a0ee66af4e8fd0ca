"""The websocket fan-out: every open dashboard served from one asyncio loop, not a thread each.

Two threads, whatever the number of dashboards:

* the **feeder** reads the store's change log after the last seq it has seen (woken at once by
  the writer's :class:`~monitor.ingest.hub.ChangeHub`, polling every :data:`POLL_INTERVAL`
  otherwise), encodes each change once as a websocket frame and hands the batch to the loop;
* the **loop** keeps the recent batches in a ring of at most :data:`RING_BYTES` and writes each
  new batch to every client that is at the head (one ``bytes`` object, many sockets). A client
  that is behind (it just connected with an older seq, or stopped reading for a while) catches
  up on its own: from the ring, else from the change log, else from a fresh snapshot — the same
  "snapshot at N, then every change after N in order" as a client that never fell behind.

Sockets arrive here after the web server did the handshake (:mod:`monitor.web.ws`); the counts
of :class:`Limits` bound them per client address and in total.

A client confined to a tenant (:func:`monitor.web.tenancy.scope_of`) gets its own snapshot and,
of the deltas, its own jobs' changes and the fleet's (workers without their current job and job
counts); every other change's place in the sequence is kept by a ``hidden`` delta (seq only),
so its stream stays gap-free and a dashboard never mistakes a skipped change for a lost one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.ingest.hub import ChangeHub
from monitor.web.frames import PING, text_frame
from monitor.web.guard import strict_dumps
from monitor.web.tenancy import redact_worker, scope_of
from monitor.web.wsclient import GOING_AWAY, TRY_AGAIN_LATER, WsClient

log = logging.getLogger(__name__)

#: How long the feeder sleeps between change-log polls when nothing wakes it (s).
POLL_INTERVAL = 0.25
#: Most changes read from the log at once.
BATCH = 500
#: Bytes of recent frames the loop keeps for clients that are a little behind.
RING_BYTES = 16 * 1024 * 1024
#: Seconds between pings; a client silent for two of them (no pong) is dropped.
PING_INTERVAL = 20.0

#: ``(tenant) -> (seq, snapshot frame)``: the whole state as a websocket frame, with its seq,
#: as a client confined to ``tenant`` (None: one that sees all) sees it.
Snapshot = Callable[[str | None], tuple[int, bytes]]


def _delta(change: dict[str, Any]) -> bytes:
    return text_frame(strict_dumps({"type": "delta", **change}, separators=(",", ":")).encode())


def hidden_frame(seq: int) -> bytes:
    """What a confined client gets in place of a change it may not see: its seq, nothing else."""
    return _delta({"seq": seq, "kind": "hidden", "id": None, "data": None})


@dataclass(frozen=True)
class Scoped:
    """A change's frame that not every client gets as is: a job's (only its tenant's clients
    and those who see all; others a :func:`hidden_frame`) or a worker's (``shared``: the one
    every confined client gets, without the worker's current job and counts)."""

    full: bytes
    owner: str | None = None
    shared: bytes | None = None

    def __len__(self) -> int:
        return len(self.full)


#: A change as the fan-out keeps it: its seq and its frame (plain bytes: the same for all).
Frame = tuple[int, "bytes | Scoped"]


def frame_for(seq: int, frame: bytes | Scoped, tenant: str | None) -> bytes:
    """The bytes of ``frame`` a client confined to ``tenant`` (None: one that sees all) gets."""
    if isinstance(frame, bytes):
        return frame
    if tenant is None or frame.owner == tenant:
        return frame.full
    return frame.shared if frame.shared is not None else hidden_frame(seq)


def delta_frames(changes: list[dict[str, Any]]) -> list[Frame]:
    """Each change of the log (read ``with_tenant``) as ``(seq, frame)``: the dashboard's
    ``delta`` message, :class:`Scoped` where a confined client gets something else."""
    out: list[Frame] = []
    for change in changes:
        tenant = change.pop("tenant", None)
        full = _delta(change)
        if change["kind"] == "job":
            out.append((change["seq"], Scoped(full, owner=tenant or "")))
        elif change["kind"] == "worker" and isinstance(change.get("data"), dict):
            out.append((change["seq"], Scoped(full, shared=_delta({**change, "data": redact_worker(change["data"])}))))
        else:
            out.append((change["seq"], full))
    return out


def joined(frames: list[Frame], tenant: str | None) -> bytes:
    """``frames`` as one write for a client confined to ``tenant``."""
    return b"".join(frame_for(seq, frame, tenant) for seq, frame in frames)


class Limits:
    """Open sockets per client address and in total; thread-safe (the web threads admit, the
    loop releases)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self.count = 0

    def admit(self, address: str) -> str | None:
        """Take a slot for ``address``; or say why not (the socket is then closed with 1013)."""
        with self._lock:
            if self.count >= self.total:
                return f"the monitor has its most open websockets ({self.total})"
            if self._open.get(address, 0) >= self.per_address:
                return f"too many websockets from {address} ({self.per_address})"
            self._open[address] = self._open.get(address, 0) + 1
            self.count += 1
            return None

    def release(self, address: str) -> None:
        with self._lock:
            left = self._open.get(address, 0) - 1
            if left > 0:
                self._open[address] = left
            else:
                self._open.pop(address, None)
            self.count = max(0, self.count - 1)


class Ring:
    """The recent batches of frames, each ``(last seq, frames)``; everything after ``base`` up to
    ``head`` is in it."""

    def __init__(self, head: int, max_bytes: int = RING_BYTES) -> None:
        self.base = self.head = head
        self.max_bytes = max_bytes
        self._batches: deque[tuple[int, list[Frame], int]] = deque()
        self._bytes = 0

    def add(self, frames: list[Frame]) -> None:
        size = sum(len(f) for _, f in frames)
        self._batches.append((frames[-1][0], frames, size))
        self._bytes += size
        self.head = frames[-1][0]
        while self._bytes > self.max_bytes and len(self._batches) > 1:
            last, _, dropped = self._batches.popleft()
            self._bytes -= dropped
            self.base = last

    def reset(self, head: int) -> None:
        """Forget everything: the log moved past what the ring holds."""
        self._batches.clear()
        self._bytes = 0
        self.base = self.head = head

    def after(self, cursor: int, most: int = BATCH, tenant: str | None = None) -> tuple[bytes, int] | None:
        """Up to ``most`` frames after ``cursor`` (as a client confined to ``tenant`` gets them)
        and the seq of the last, or None when the ring no longer reaches back to ``cursor``."""
        if cursor < self.base:
            return None
        out: list[bytes] = []
        last = cursor
        for batch_last, frames, _ in self._batches:
            if batch_last <= cursor:
                continue
            for seq, frame in frames:
                if seq > cursor and len(out) < most:
                    out.append(frame_for(seq, frame, tenant))
                    last = seq
        return b"".join(out), last


class Fanout:
    """Serves handed-over websocket sockets from one asyncio loop (see the module doc).

    ``snapshot()`` runs in an executor thread when a client needs a fresh snapshot; ``stop()``
    closes every socket with 1001 and ends both threads.
    """

    def __init__(self, store: Any, hub: ChangeHub, snapshot: Snapshot, limits: Limits) -> None:
        self.store, self.hub, self.snapshot, self.limits = store, hub, snapshot, limits
        self.clients: set[WsClient] = set()
        self.ring = Ring(0)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._started = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop and the feeder (once; later calls do nothing)."""
        with self._started:
            if self.loop is not None or self._stop.is_set():
                return
            self.ring = Ring(self.store.seq())
            loop = asyncio.new_event_loop()
            self.loop = loop
            self._threads = [threading.Thread(target=self._run_loop, name="ws-fanout", daemon=True),
                             threading.Thread(target=self._feed, name="ws-feeder", daemon=True)]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket (1001, going away) and end the threads."""
        with self._started:
            first = not self._stop.is_set()
            self._stop.set()
            loop = self.loop
        self.hub.publish(self.hub.seq)  # wakes the feeder
        if loop is None:
            return
        if first and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(timeout)
            except Exception:  # the loop already ended, or a socket would not close in time
                log.debug("websocket fan-out: closing the sockets did not finish", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(timeout)

    def _run_loop(self) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.call_later(PING_INTERVAL, self._ping)
        try:
            self.loop.run_forever()
        finally:
            for client in list(self.clients):
                client.abort()
            self.loop.close()

    async def _close_all(self) -> None:
        for client in list(self.clients):
            client.close(GOING_AWAY, "the monitor is stopping", linger=False)
        deadline = time.monotonic() + 1.0
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # -- the feeder thread -----------------------------------------------------------------

    def _feed(self) -> None:
        """Read the change log after ``head`` and hand each batch to the loop, until stopped."""
        head = self.ring.head
        while not self._stop.is_set():
            try:
                changes = self.store.changes_since(head, limit=BATCH, with_tenant=True)
            except Exception:  # the store is closing, or a passing database error
                log.warning("websocket fan-out: reading the change log failed", exc_info=True)
                self._stop.wait(POLL_INTERVAL)
                continue
            if changes is None:  # the log moved past us: clients behind start over
                head = self.store.seq()
                self._post(self._reset, head)
            elif changes:
                head = changes[-1]["seq"]
                self._post(self._broadcast, delta_frames(changes))
            else:
                self.hub.wait(head, POLL_INTERVAL)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # closed meanwhile
                pass

    # -- in the loop -----------------------------------------------------------------------

    def _broadcast(self, frames: list[Frame]) -> None:
        """Add a batch to the ring; write it to every client at the head (one join per
        audience: all, or each tenant), wake the others."""
        before = self.ring.head
        self.ring.add(frames)
        data: dict[str | None, bytes] = {}
        for client in self.clients:
            if client.live and client.cursor == before:
                if client.tenant not in data:
                    data[client.tenant] = joined(frames, client.tenant)
                client.push(data[client.tenant], self.ring.head)
            else:
                self._catch_up_later(client)

    def _reset(self, head: int) -> None:
        self.ring.reset(head)
        for client in self.clients:
            client.live = False
            self._catch_up_later(client)

    def adopt(self, sock: socket.socket, address: str, identity: Any, cursor: int, first: bytes | None) -> None:
        """Serve ``sock`` (its handshake done, its slot taken from :attr:`limits`): write
        ``first`` (a snapshot frame, or nothing), then every change after ``cursor``."""
        self.start()
        self._post(self._adopt, sock, address, identity, cursor, first, None)

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Close ``sock`` (its handshake done, no slot taken) with 1013 and ``reason``."""
        self.start()
        self._post(self._adopt, sock, "", None, 0, None, reason)

    def _adopt(self, sock: socket.socket, address: str, identity: Any, cursor: int,
               first: bytes | None, refusal: str | None) -> None:
        assert self.loop is not None

        def gone(client: WsClient) -> None:
            self.clients.discard(client)
            if refusal is None:
                self.limits.release(address)

        client = WsClient(address, identity, cursor, gone)
        client.tenant = scope_of(identity)
        self.loop.create_task(self._serve(sock, client, first, refusal))

    async def _serve(self, sock: socket.socket, client: WsClient, first: bytes | None, refusal: str | None) -> None:
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(lambda: client, sock)
        except OSError:
            sock.close()
            client.connection_lost(None)
            return
        if refusal is not None:
            client.close(TRY_AGAIN_LATER, refusal[:120])
            return
        if self._stop.is_set():
            client.close(GOING_AWAY, "the monitor is stopping", linger=False)
            return
        self.clients.add(client)
        if first:
            client.write(first)
        self._catch_up_later(client)

    def _catch_up_later(self, client: WsClient) -> None:
        if self.loop is not None and (client.task is None or client.task.done()) and not client.closing:
            client.task = self.loop.create_task(self._catch_up(client))

    async def _catch_up(self, client: WsClient) -> None:
        """Bring ``client`` to the head: from the ring, the change log or a new snapshot."""
        assert self.loop is not None
        while not client.closing:
            await client.writable.wait()
            if client.closing:
                return
            if client.cursor == self.ring.head:
                client.live = True
                return
            chunk = self.ring.after(client.cursor, tenant=client.tenant)
            if chunk is None:
                chunk = await self.loop.run_in_executor(None, self._from_log, client.cursor, client.tenant)
            if chunk[1] == client.cursor:  # nothing newer yet (a snapshot ahead of the feeder)
                return
            client.push(*chunk)

    def _from_log(self, cursor: int, tenant: str | None) -> tuple[bytes, int]:
        """Frames after ``cursor`` from the change log (as a client confined to ``tenant`` gets
        them), or a snapshot when it no longer holds them."""
        changes = self.store.changes_since(cursor, limit=BATCH, with_tenant=True)
        if changes is None:
            seq, frame = self.snapshot(tenant)
            return frame, seq
        frames = delta_frames(changes)
        return joined(frames, tenant), frames[-1][0] if frames else cursor

    def _ping(self) -> None:
        """Ping every client; drop the ones that stayed silent for two intervals."""
        assert self.loop is not None
        silent_since = time.monotonic() - 2 * PING_INTERVAL
        for client in list(self.clients):
            if client.heard < silent_since:
                client.abort()
            else:
                client.write(PING)
        self.loop.call_later(PING_INTERVAL, self._ping)
