"""What Flower's API handlers share, as Flask helpers (:mod:`monitor.web.flower_api`,
:mod:`monitor.web.flower_control`): JSON in the order it was built (Flower's task list is an
ordered map; Flask would sort its keys), errors as Flower writes them (a ``text/plain``
message with the status), and Flower's argument parsing (query string or form body; booleans
as ``strtobool`` reads them)."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, request

#: Where the Flower-compatible API is mounted (our own ``/api/...`` routes have other shapes).
PREFIX = "/flower"
#: Seconds to wait for a worker's answer (Flower's ``--inspect_timeout`` is 1 s; a loaded
#: worker on a shared machine needs more).
REPLY_TIMEOUT = 3.0
_TRUE = frozenset({"y", "yes", "t", "true", "on", "1"})
_FALSE = frozenset({"n", "no", "f", "false", "off", "0"})


class FlowerError(Exception):
    """A request Flower would refuse: answered ``status`` with ``message`` as text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def ctx() -> Any:
    return current_app.extensions["jobqueue_monitor"]


def as_json(value: Any, status: int = 200) -> Response:
    """``value`` as JSON with its keys in the order they were built."""
    return Response(json.dumps(value, default=str), status=status, mimetype="application/json")


def as_text(message: str, status: int) -> Response:
    """An error as Flower writes it: the message alone, ``text/plain``."""
    return Response(message, status=status, mimetype="text/plain")


def arg(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    """A query-string or form argument (stripped); 400 when ``required`` and missing."""
    value = request.values.get(name, default)
    value = value.strip() if isinstance(value, str) else value
    if required and not value:
        raise FlowerError(400, f"Missing argument {name}")
    return value


def flag(name: str) -> bool:
    """A boolean argument as Flower reads it (``strtobool``); absent is false."""
    value = arg(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise FlowerError(400, f"Invalid argument '{value}' of type 'bool'")


def number(name: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
    """An ``int`` or ``float`` argument; 400 when it is not one."""
    value = arg(name, required=required)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError as exc:
        raise FlowerError(400, f"Invalid argument '{value}' of type '{kind.__name__}'") from exc


def worker_error(worker: str, replies: list[Any] | None) -> str:
    """Why a worker refused a control (its ``error`` reply), or that it did not answer."""
    if not replies:
        return f"worker '{worker}' did not answer within {REPLY_TIMEOUT:.0f} s"
    for reply in replies:
        if isinstance(reply, dict) and isinstance(reply.get(worker), dict):
            return str(reply[worker].get("error", "Unknown reason"))
    return "Unknown reason"


def answered_ok(worker: str, replies: list[Any] | None) -> dict[str, Any] | None:
    """The worker's ``{"ok": ...}`` reply, or None (no answer, or an error)."""
    for reply in replies or []:
        if isinstance(reply, dict) and isinstance(reply.get(worker), dict) and "ok" in reply[worker]:
            return dict(reply[worker])
    return None
