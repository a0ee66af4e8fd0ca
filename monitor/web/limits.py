"""Rate limits (Flask-Limiter) on submit, controls and login, from the routes' declarations.

Each declared :class:`~monitor.web.routes.Limit` maps to a setting
(``JOBQUEUE_MONITOR_RATE_SUBMIT``, ``..._CONTROL``, ``..._LOGIN``), counted per API key or
login (its audit subject) or, for anonymous callers and logins, per address. Counters live in
the broker's Redis when the broker is Redis, so every monitor process shares them; in memory
otherwise. Requests with wrong credentials count against the login limit of their address
too, so guessing a token through the API is as slow as through the login form. Over a limit:
429 with ``Retry-After`` in the API's JSON error shape. A storage that cannot be reached lets
requests through (logged) rather than failing them.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from limits import parse_many

from jobqueue.config import Settings
from monitor.web.routes import Limit, collect

#: Where an app keeps its limiter.
EXTENSION = "jobqueue_limiter"


def _setting(settings: Settings, limit: Limit) -> str:
    value: str = getattr(settings, f"monitor_rate_{limit.value}")
    return value


def rate_key() -> str:
    """Who a limit counts: the logged-in subject (key, token, user), else the address."""
    identity = g.get("jobqueue_identity")
    if identity is not None and identity.logged_in:
        return f"who:{identity.subject}"
    return f"addr:{request.remote_addr or '?'}"


def _address_key() -> str:
    return f"addr:{request.remote_addr or '?'}"


def storage_uri(settings: Settings) -> str:
    """The broker's Redis when the broker is Redis (``redis://``/``rediss://``), else memory."""
    scheme = settings.broker_url.split("://", 1)[0].lower()
    return settings.broker_url if scheme in ("redis", "rediss") else "memory://"


def retry_after(exc: RateLimitExceeded) -> int:
    """Seconds until the exceeded limit's window resets (at least 1)."""
    limiter: Limiter = current_app.extensions[EXTENSION]
    breached = limiter.current_limit
    if breached is None:  # not known (storage trouble): one window of the limit at most
        return max(1, int(exc.limit.limit.get_expiry()))
    return max(1, math.ceil(breached.reset_at - time.time()))


def _too_many(exc: RateLimitExceeded) -> Response:
    from monitor.web.responses import error_response

    seconds = retry_after(exc)
    response = error_response(429, "rate_limited", f"too many requests ({exc.description}); retry in {seconds} s")
    response.headers["Retry-After"] = str(seconds)
    return response


def install(app: Flask, settings: Settings) -> Limiter:
    """A limiter for ``app`` with each declared route's limit (call after the routes exist)."""
    prefix = "jobqueue-monitor:" + hashlib.sha256(settings.monitor_db.encode()).hexdigest()[:10]
    limiter = Limiter(key_func=rate_key, app=app, storage_uri=storage_uri(settings), strategy="fixed-window",
                      swallow_errors=True, key_prefix=prefix, headers_enabled=False,
                      storage_options={"socket_connect_timeout": 2, "socket_timeout": 2}
                      if storage_uri(settings) != "memory://" else {})
    for endpoint, spec in collect(app).items():
        if spec.limit is None:
            continue
        key = _address_key if spec.limit is Limit.LOGIN else rate_key
        # The wrapper checks after the access check (it runs inside the view), so the count is
        # per proven identity; it replaces the view under its own endpoint.
        decorate = limiter.limit(_setting(settings, spec.limit), key_func=key)
        app.view_functions[endpoint] = decorate(app.view_functions[endpoint])  # type: ignore[assignment]
    app.register_error_handler(RateLimitExceeded, _too_many)
    app.extensions[EXTENSION] = limiter
    app.extensions[EXTENSION + "_prefix"] = prefix
    return limiter


def note_failure() -> int | None:
    """Count a request with wrong credentials against its address's login limit; the
    seconds to wait once over it, else None."""
    limiter: Limiter | None = current_app.extensions.get(EXTENSION)
    if limiter is None:
        return None
    settings = current_app.extensions["jobqueue_monitor"].settings
    prefix = current_app.extensions[EXTENSION + "_prefix"]
    try:
        for item in parse_many(settings.monitor_rate_login):
            if not limiter.limiter.hit(item, prefix, "auth-failure", _address_key()):
                reset, _ = limiter.limiter.get_window_stats(item, prefix, "auth-failure", _address_key())
                return max(1, math.ceil(reset - time.time()))
    except Exception:  # storage down: do not fail the request over it
        current_app.logger.warning("rate limit storage unreachable", exc_info=True)
    return None
