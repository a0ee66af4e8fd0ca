"""The ``/ws`` websocket: a snapshot with its sequence N, then every change after N, in order.

``?since=N`` (a reconnecting client's last seq) yields exactly the changes it missed, read from
the store's change log, or a fresh snapshot when the log no longer reaches back to N. Both the
snapshot and the deltas come from the database (the snapshot and its seq in one read
transaction), so there is no gap and no duplicate between them, also when this web process is
not the collector's process. In the collector's process the writer's
:class:`~monitor.ingest.hub.ChangeHub` wakes the stream at once; elsewhere it polls the change log.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import current_app, request

from monitor.web.api import state_snapshot
from monitor.web.guard import strict_dumps
from monitor.web.routes import Role, declare
from monitor.web.schemas import int_query

#: How long a stream sleeps between change-log polls when nothing wakes it (s).
POLL_INTERVAL = 0.25
#: Most changes sent per read of the log.
BATCH = 500


#: Largest inbound websocket message (bytes): clients send nothing, so a few KB is plenty;
#: simple-websocket closes the socket (1009) as soon as a message grows past it.
MAX_INBOUND_MESSAGE = 4096
#: Inbound messages a client may send before the stream closes on it (policy violation).
MAX_INBOUND_MESSAGES = 16


def _send(ws: Any, message: dict[str, Any]) -> None:
    ws.send(strict_dumps(message, separators=(",", ":")))


def _drain(ws: Any, received: int) -> int:
    """Read and drop what the client sent (nothing is expected) so it never piles up in
    memory; close the socket when the client keeps sending. Returns the new count."""
    while getattr(ws, "connected", True):
        try:
            message = ws.receive(timeout=0)
        except Exception:  # closed while reading: the loop ends on ws.connected
            return received
        if message is None:
            return received
        received += 1
        if received > MAX_INBOUND_MESSAGES:
            ws.close(reason=1008, message="this stream takes no input")
            return received
    return received


def _snapshot_message() -> tuple[int, dict[str, Any]]:
    state = state_snapshot()
    return state["seq"], {"type": "snapshot", "seq": state["seq"], "state": state}


def stream(ws: Any) -> None:
    """Serve one websocket client until it goes away."""
    ctx = current_app.extensions["jobqueue_monitor"]
    store, hub = ctx.store, ctx.hub
    since_arg = request.args.get("since")
    last: int | None = None
    if since_arg is not None:
        try:
            since = int(since_arg)
        except ValueError:
            since = -1
        if since >= 0 and store.changes_since(since, limit=1) is not None:
            last = since
    if last is None:
        last, message = _snapshot_message()
        _send(ws, message)
    received = 0
    while getattr(ws, "connected", True) and not ctx.stopping.is_set():
        received = _drain(ws, received)
        if not getattr(ws, "connected", True):
            break
        changes = store.changes_since(last, limit=BATCH)
        if changes is None:  # the log moved past us (pruned): start over from a snapshot
            last, message = _snapshot_message()
            _send(ws, message)
            continue
        for change in changes:
            _send(ws, {"type": "delta", **change})
            last = change["seq"]
        if not changes:
            hub.wait(last, POLL_INTERVAL)


class _DaemonThread(threading.Thread):
    """A thread that never holds up interpreter exit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["daemon"] = True
        super().__init__(*args, **kwargs)


def register(app: Any) -> None:
    """Attach ``/ws`` to ``app`` (flask-sock, per app)."""
    from flask_sock import Sock

    options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
    options.setdefault("max_message_size", MAX_INBOUND_MESSAGE)
    # simple-websocket reads each socket in a thread of its own; a client that never answers
    # the closing handshake must not keep a stopping server's process alive.
    options.setdefault("thread_class", _DaemonThread)
    sock = Sock(app)
    app.extensions["sock"] = sock
    sock.route("/ws")(declare(stream, "/ws", role=Role.VIEWER, summary="Websocket: a snapshot, then every change",
                              query=(int_query("since", 0, 2**63 - 1),), content="application/json", errors=(403,)))
