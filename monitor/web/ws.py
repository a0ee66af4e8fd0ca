"""The ``/ws`` websocket: a snapshot with its sequence N, then every change after N, in order.

``?since=N`` (a reconnecting client's last seq) yields exactly the changes it missed, read from
the store's change log, or a fresh snapshot when the log no longer reaches back to N. Both the
snapshot and the deltas come from the database (the snapshot and its seq in one read
transaction), so there is no gap and no duplicate between them.

The opening handshake is an ordinary request of the web server: the guard's Origin check and
every ``before_request`` hook run, then :data:`Authorize` decides, then the socket limits. Once
the 101 answer is written the socket is taken from the web server (:func:`take_socket`) and
handed to the :class:`~monitor.web.fanout.Fanout`, so the request's thread is free again: an
open dashboard costs memory in one asyncio loop, not a thread of the server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.datastructures import Headers

from monitor.web.api import state_snapshot
from monitor.web.fanout import Fanout, Limits
from monitor.web.frames import Refusal, switching_protocols, text_frame, upgrade_problem
from monitor.web.guard import strict_dumps
from monitor.web.responses import error_response
from monitor.web.routes import Role, declare
from monitor.web.schemas import int_query
from monitor.web.tenancy import scope_of

#: Extension key of the app's :class:`WsEntry`.
EXTENSION = "jobqueue_ws"


#: ``authorize(headers, cookies) -> identity or Refusal``, consulted before the upgrade; the
#: identity (any value, e.g. a user and a role) stays with the socket.
Authorize = Callable[[Headers, Mapping[str, str]], Any]


def allow_everyone(headers: Headers, cookies: Mapping[str, str]) -> Any:
    """The default :data:`Authorize`: the dashboard's stream needs no credentials."""
    return {"name": "anonymous"}


@dataclass
class WsEntry:
    """What ``/ws`` of one app uses: the fan-out (started with the first socket) and the
    authorization callable (replaceable: ``app.extensions["jobqueue_ws"].authorize = ...``)."""

    fanout: Fanout
    authorize: Authorize
    snapshots: TenantSnapshots


def snapshot_frame(finished_limit: int = 200, tenant: str | None = None) -> tuple[int, bytes]:
    """The ``snapshot`` message as a frame, with its seq (needs an app context), as a client
    confined to ``tenant`` sees it (:mod:`monitor.web.tenancy`)."""
    state = state_snapshot(finished_limit, tenant)
    message = {"type": "snapshot", "seq": state["seq"], "state": state}
    return state["seq"], text_frame(strict_dumps(message, separators=(",", ":")).encode())


class SharedSnapshot:
    """Snapshot frames shared by the dashboards that open at about the same time.

    Any snapshot at seq N is a right start (the client then gets every change after N), so a
    request waits for a snapshot already being made rather than making its own, and takes one
    made less than :data:`SHARE_SECONDS` ago: 500 dashboards reconnecting together (a monitor
    restart) cost a few snapshots, not 500.
    """

    #: How old (s) a finished snapshot may be and still be handed to a new client.
    SHARE_SECONDS = 0.5

    def __init__(self, make: Callable[[], tuple[int, bytes]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pending: Future[tuple[int, bytes]] | None = None
        self._done: tuple[float, tuple[int, bytes]] | None = None

    def get(self) -> tuple[int, bytes]:
        with self._lock:
            if self._done is not None and time.monotonic() - self._done[0] < self.SHARE_SECONDS:
                return self._done[1]
            pending, mine = self._pending, self._pending is None
            if mine:
                pending = self._pending = Future()
        assert pending is not None
        if not mine:
            return pending.result()
        try:
            result = self._make()
        except BaseException as exc:
            pending.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._pending = None
        with self._lock:
            self._done = (time.monotonic(), result)
        pending.set_result(result)
        return result


class TenantSnapshots:
    """One :class:`SharedSnapshot` per audience: the clients that see all, and each tenant's
    (a tenant's dashboards share theirs, never another's)."""

    def __init__(self, make: Callable[[str | None], tuple[int, bytes]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._shared: dict[str | None, SharedSnapshot] = {}

    def get(self, tenant: str | None = None) -> tuple[int, bytes]:
        with self._lock:
            shared = self._shared.get(tenant)
            if shared is None:
                shared = self._shared[tenant] = SharedSnapshot(lambda: self._make(tenant))
        return shared.get()


def take_socket(raw: socket.socket) -> socket.socket:
    """Take the connection of ``raw`` from the web server: return a socket of our own on it, and
    leave the server's file descriptor on a closed local pair, so whatever the server does with
    it afterwards (shutdown, close, one more read) ends at once and never touches the client."""
    own = raw.dup()
    placeholder, peer = socket.socketpair()
    peer.close()
    os.dup2(placeholder.fileno(), raw.fileno())
    placeholder.close()
    return own


class HandedOver(Response):
    """The response of a request whose socket the fan-out now owns: the server must neither
    write an answer nor keep the connection (how flask-sock ends a websocket, too)."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()  # gunicorn: close this connection without answering
        raise ConnectionError("websocket handed over")  # Werkzeug: the same


def _cursor() -> int | None:
    """``since`` when the change log still reaches back to it, else None (a snapshot is due)."""
    since_arg = request.args.get("since")
    if since_arg is None:
        return None
    try:
        since = int(since_arg)
    except ValueError:
        return None
    store = current_app.extensions["jobqueue_monitor"].store
    if since >= 0 and store.changes_since(since, limit=1) is not None:
        return since
    return None


def stream() -> Any:
    """``GET /ws``: check, authorize, admit, answer 101 and hand the socket to the fan-out."""
    problem = upgrade_problem(request.method, request.headers)
    if problem is not None:
        return error_response(400, "bad_request", f"/ws is a websocket: {problem}")
    entry: WsEntry = current_app.extensions[EXTENSION]
    identity = entry.authorize(request.headers, request.cookies)
    if isinstance(identity, Refusal):
        code = {401: "unauthorized", 429: "rate_limited"}.get(identity.status, "forbidden")
        response = error_response(identity.status, code, identity.message)
        if identity.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="jobqueue", Basic realm="jobqueue"'
        return response
    raw = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if not isinstance(raw, socket.socket) or hasattr(raw, "context"):  # no socket, or TLS
        return error_response(501, "not_implemented", "this server cannot hand over its socket")
    address = request.remote_addr or "?"
    refused = entry.fanout.limits.admit(address)
    try:
        first: bytes | None = None
        cursor = None if refused else _cursor()
        if cursor is None and not refused:
            cursor, first = entry.snapshots.get(scope_of(identity))
        raw.sendall(switching_protocols(request.headers["Sec-WebSocket-Key"]))
        own = take_socket(raw)
    except BaseException:
        if refused is None:
            entry.fanout.limits.release(address)
        raise
    if refused is not None:
        entry.fanout.refuse(own, refused)
    else:
        entry.fanout.adopt(own, address, identity, cursor or 0, first)
    return HandedOver()


def register(app: Flask, authorize: Authorize = allow_everyone) -> None:
    """Attach ``/ws`` to ``app``, with a fan-out on the app's store and hub."""
    context = app.extensions["jobqueue_monitor"]
    settings = context.settings

    def snapshot(tenant: str | None) -> tuple[int, bytes]:
        with app.app_context():
            return snapshot_frame(tenant=tenant)

    limits = Limits(settings.monitor_ws_max_sockets, settings.monitor_ws_max_per_address)
    shared = TenantSnapshots(snapshot)
    app.extensions[EXTENSION] = WsEntry(Fanout(context.store, context.hub, shared.get, limits), authorize, shared)
    # websocket=True: Werkzeug routes a request with "Upgrade: websocket" only to such a rule.
    view = declare(stream, "/ws", role=Role.VIEWER, summary="Websocket: a snapshot, then every change",
                   query=(int_query("since", 0, 2**63 - 1),), content="application/json", errors=(400, 501),
                   extra={"authorize": EXTENSION})
    app.add_url_rule("/ws", "ws", view, methods=["GET"], websocket=True)


def stop(app: Flask) -> None:
    """Close every open ``/ws`` socket (1001) and end the fan-out's threads."""
    entry: WsEntry | None = app.extensions.get(EXTENSION)
    if entry is not None:
        entry.fanout.stop()
