"""One auth check for every mutating endpoint.

Credentials come from the settings: a bearer token (``JOBQUEUE_MONITOR_TOKEN``) and/or HTTP
basic auth (``JOBQUEUE_MONITOR_BASIC_AUTH="user:password"``). With neither configured the
monitor only binds to localhost (:func:`monitor.server.serve` refuses anything else), and only
loopback clients may act. Read-only mode refuses every control with 403.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, jsonify, request

from jobqueue.config import Settings

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def has_credentials(settings: Settings) -> bool:
    """True when a token or basic-auth credentials are configured."""
    return bool(settings.monitor_token or settings.monitor_basic_auth)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _error(status: int, code: str, message: str) -> Any:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="jobqueue", Basic realm="jobqueue"'
    return response


def check(settings: Settings, headers: Any, remote_addr: str | None) -> Any:
    """Return an error response when the request may not mutate, else None."""
    if settings.monitor_read_only:
        return _error(403, "read_only", "the monitor runs in read-only mode")
    if not has_credentials(settings):
        if remote_addr is None or is_loopback(remote_addr):
            return None
        return _error(401, "unauthorized", "no credentials configured: controls only from localhost")
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and settings.monitor_token:
        if hmac.compare_digest(value.strip().encode(), settings.monitor_token.encode()):
            return None
    if scheme.lower() == "basic" and settings.monitor_basic_auth:
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (ValueError, TypeError):
            decoded = b""
        if hmac.compare_digest(decoded, settings.monitor_basic_auth.encode()):
            return None
    return _error(401, "unauthorized", "missing or wrong credentials")


def mutating(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the view changes something, so it goes through :func:`check` first."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = current_app.extensions["jobqueue_monitor"].settings
        refused = check(settings, request.headers, request.remote_addr)
        if refused is not None:
            return refused
        return view(*args, **kwargs)

    return wrapper
