"""The access check every request goes through, from the routes' declared roles.

Once any credentials are configured (a token, basic auth, or an API key in the store) every
route but the public ones (``/healthz``, ``/login``, single sign-on, static files) needs a
login: a bearer token or key, basic auth, or the session cookie of the login page or of single
sign-on (which counts as configured credentials too). Anonymous reads are allowed
only with ``JOBQUEUE_MONITOR_PUBLIC_READ``; ``/metrics`` also opens to the metrics token or
``JOBQUEUE_MONITOR_METRICS_PUBLIC``. A refusal is 401 (no or bad credentials) or 403 (a role
too weak, read-only mode) in the API's JSON error shape; a page sends an unauthenticated
browser to ``/login``. With no credentials configured at all, reads are open and controls
are for loopback clients only, as before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, current_app, g, redirect, request
from werkzeug.datastructures import Headers

from jobqueue.config import Settings
from monitor.store.access import any_key
from monitor.web import sessions
from monitor.web.auth import (
    ANONYMOUS,
    BadCredentials,
    Identity,
    from_header,
    from_session,
    has_credentials,
    is_loopback,
)
from monitor.web.frames import Refusal as WsRefusal
from monitor.web.limits import note_failure
from monitor.web.prefix import base_path
from monitor.web.routes import Role, RouteSpec, spec_for

#: A request's headers: Werkzeug's, or any mapping (only ``Authorization`` is read).
HeaderMap = Headers | Mapping[str, str]
#: How long "are there API keys?" is remembered (s): a first key turns auth on within this.
KEYS_CHECK_INTERVAL = 2.0


class Refusal(Exception):
    """A request the access check refuses: status, code, message."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def _context() -> Any:
    return current_app.extensions["jobqueue_monitor"]


def auth_configured() -> bool:
    """True when a token, basic auth or any API key is configured (keys checked at most every
    :data:`KEYS_CHECK_INTERVAL`)."""
    ctx = _context()
    if has_credentials(ctx.settings):
        return True
    cache = current_app.extensions.setdefault("jobqueue_keys_seen", {"at": -1e9, "value": False})
    now = time.monotonic()
    if now - cache["at"] > KEYS_CHECK_INTERVAL:
        cache.update(at=now, value=any_key(ctx.store))
    return bool(cache["value"])


def _authenticate(headers: HeaderMap, cookies: Mapping[str, str]) -> Identity | None:
    """The identity the request's credentials prove (header first, then session cookie);
    None without any. Raises :class:`BadCredentials`."""
    ctx = _context()
    found = from_header(ctx.settings, ctx.store, headers.get("Authorization", ""))
    if found is not None:
        return found
    payload = sessions.read(current_app, cookies, ctx.settings.monitor_session_seconds)
    if payload is False:
        raise BadCredentials("the session cookie is not valid (forged or expired): log in again", guess=False)
    if not payload:
        return None
    return from_session(ctx.store, payload, sessions.fingerprint(ctx.settings), sessions.sso_fingerprint(ctx.settings))


def current_identity() -> Identity:
    """Who this request acts as (resolved once per request; wrong credentials: anonymous)."""
    found = g.get("jobqueue_identity")
    if found is None:
        try:
            found = _resolve(_context().settings, request.headers, request.cookies)
        except BadCredentials:
            found = ANONYMOUS
        g.jobqueue_identity = found
    return found  # type: ignore[no-any-return]


def _resolve(settings: Settings, headers: HeaderMap, cookies: Mapping[str, str]) -> Identity:
    if not auth_configured():
        address = request.remote_addr
        if address is None or is_loopback(address):
            return Identity("local", Role.ADMIN, "local", via="loopback")
        return Identity("anonymous", Role.VIEWER, "anonymous", via="none")
    found = _authenticate(headers, cookies)
    if found is not None:
        return found
    return Identity("anonymous", Role.VIEWER if settings.monitor_public_read else Role.PUBLIC, "anonymous", via="none")


def authorize(spec: RouteSpec, settings: Settings, headers: HeaderMap | None = None,
              cookies: Mapping[str, str] | None = None) -> Identity:
    """The identity of this request (credentials from ``headers`` and ``cookies``, by default
    the request's own) if it may call ``spec``'s route; else :class:`Refusal`."""
    if spec.control and settings.monitor_read_only:
        raise Refusal(403, "read_only", "the monitor runs in read-only mode")
    if spec.role is Role.PUBLIC:  # wrong credentials do not close the login page
        return current_identity()
    try:
        identity = _resolve(settings, request.headers if headers is None else headers,
                            request.cookies if cookies is None else cookies)
    except BadCredentials as exc:
        wait = note_failure() if exc.guess else None
        if wait is not None:
            raise Refusal(429, "rate_limited", f"too many wrong credentials; retry in {wait} s", wait) from None
        raise Refusal(401, "unauthorized", str(exc)) from None
    g.jobqueue_identity = identity
    if spec.scrape and (settings.monitor_metrics_public or identity.kind == "scrape"):
        return identity
    if identity.kind == "scrape":
        raise Refusal(401, "unauthorized", "the metrics token opens /metrics only")
    if identity.role.allows(spec.role):
        return identity
    if not identity.logged_in and identity.kind != "local":
        message = ("no credentials configured: controls only from localhost" if not auth_configured()
                   else "log in (Authorization header or session) to use this")
        raise Refusal(401, "unauthorized", message)
    raise Refusal(403, "forbidden", f"this needs the {spec.role.value} role; you have {identity.role.value}")


def _refusal_response(exc: Refusal, spec: RouteSpec | None) -> Response:
    from monitor.web.responses import error_response

    if exc.status == 401 and spec is not None and spec.page:
        target = request.full_path.rstrip("?") if request.query_string else request.path
        response: Response = redirect(base_path() + "/login?next=" + quote(target, safe="/"), code=302)  # type: ignore[assignment]
        if request.cookies.get(sessions.COOKIE):
            sessions.close_session(request, response)  # a stale or forged session: forget it
        return response
    response = error_response(exc.status, exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="jobqueue", Basic realm="jobqueue"'
    return response


def _before() -> Response | None:
    """``before_request``: refuse what the caller may not do."""
    if request.endpoint is None:  # no such route: Flask answers 404
        return None
    spec = spec_for(current_app, request.endpoint)
    if spec is not None and spec.extra.get("authorize"):
        return None  # the route asks its own authorize callable (/ws: ws_authorize)
    try:
        if spec is None:
            raise Refusal(403, "undeclared_route", "this route declares no role")
        authorize(spec, _context().settings)
    except Refusal as exc:
        return _refusal_response(exc, spec)
    return None


def ws_authorize(headers: Headers, cookies: Mapping[str, str]) -> Any:
    """The :data:`monitor.web.ws.Authorize` of the monitor: the same check as every route, for
    ``/ws``'s declared role (viewer; anonymous with ``JOBQUEUE_MONITOR_PUBLIC_READ``), with the
    credentials of the handshake's headers (Bearer token or API key, basic) or session cookie.
    The identity, or a :class:`monitor.web.frames.Refusal` (401, 403, 429)."""
    spec = spec_for(current_app, "ws")
    if spec is None:
        return WsRefusal(403, "this route declares no role")
    try:
        return authorize(spec, _context().settings, headers, cookies)
    except Refusal as exc:
        return WsRefusal(exc.status, exc.message)


def install(app: Flask) -> None:
    """Put the access check on ``app`` (after the guard: cross-site and body checks first), and
    make it ``/ws``'s authorize callable."""
    app.before_request(_before)
    entry = app.extensions.get("jobqueue_ws")
    if entry is not None:
        entry.authorize = ws_authorize
