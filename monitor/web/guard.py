"""The monitor's front door: what every request and response goes through, whatever its route.

* **Cross-site requests.** A mutating request (POST, PUT, PATCH, DELETE) is refused with 403
  when its ``Origin`` (or, without one, its ``Referer``) names another site than the monitor
  itself, and when its body is not JSON: an HTML form cannot send ``application/json`` and a
  ``no-cors`` fetch cannot either, so neither can act through a visitor's browser. Without
  credentials, controls also need a loopback ``Host`` (a DNS-rebound name is another site).
  A script that sends JSON without an Origin (curl, Python) still works.
* **The websocket** ``/ws`` checks the Origin the same way before the handshake.
* **Bodies** are limited in size (413) and JSON nesting depth (400), and JSON must be strict:
  ``NaN`` and ``Infinity`` are refused (400), never stored.
* **Responses** are strict JSON (``allow_nan=False``; a non-finite float that reached the store
  goes out as ``null``) and carry security headers: a CSP without inline script,
  ``nosniff``, ``frame-ancestors 'none'`` and a same-origin referrer policy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, abort, current_app, request
from flask.json.provider import DefaultJSONProvider

from jobqueue.config import Settings
from monitor.web.auth import has_credentials, is_loopback
from monitor.web.routes import spec_for

#: Methods that change something and so must come from the monitor's own pages or a script.
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Deepest JSON nesting a request body may have (the API's own bodies need fewer than 10).
MAX_JSON_DEPTH = 64
#: The pages' Content-Security-Policy: scripts and styles only from our own files.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
#: Security headers on every response (the file route sets a stricter CSP of its own).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class GuardError(Exception):
    """A request the front door refuses: status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- strict JSON ----------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±Infinity) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """JSON that every parser accepts: ``allow_nan=False``, non-finite floats sent as null.

    The fast path serialises once; only a value that holds a NaN or an infinity is walked.
    """
    kwargs.setdefault("default", str)
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False, **kwargs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` (Python accepts them by default) and
    nesting too deep for its recursion (a ``ValueError``, as for any other bad JSON)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with :func:`strict_dumps` and :func:`strict_loads`."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        kwargs.setdefault("default", self.default)
        return strict_dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strict_loads(s)


def json_depth(data: bytes) -> int:
    """The deepest ``[``/``{`` nesting in the JSON text ``data`` (strings skipped), in one
    pass and without recursion, so a hostile body is measured before it is parsed."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# -- origins --------------------------------------------------------------------------------


def _netloc(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        return None
    return parts.netloc.lower()


def allowed_origin(origin: str, host: str, extra: Iterable[str] = ()) -> bool:
    """True when ``origin`` (an Origin or Referer header) is the site ``host`` serves, or one
    of the configured extra origins (a reverse proxy's public address)."""
    netloc = _netloc(origin)
    if netloc is None:
        return False
    if netloc == host.lower():
        return True
    return any(_netloc(e) == netloc for e in extra)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_site(settings: Settings, headers: Any, require_local_host: bool) -> None:
    """Raise :class:`GuardError` (403) when the request comes from another site."""
    host = headers.get("Host", "")
    origin = headers.get("Origin")
    referer = headers.get("Referer")
    extra = settings.monitor_allowed_origins
    if origin is not None:
        if not allowed_origin(origin, host, extra):
            raise GuardError(403, "cross_site", "request from another origin refused")
    elif referer:
        if not allowed_origin(referer, host, extra):
            raise GuardError(403, "cross_site", "request from another site refused")
    if require_local_host and not has_credentials(settings):
        name = _host_name(host)
        if not (is_loopback(name) or name == settings.monitor_host or origin is None and referer is None):
            raise GuardError(403, "bad_host", f"Host {host!r} is not this monitor (no credentials configured)")


def check_body(max_bytes: int, form_ok: bool = False) -> None:
    """Raise :class:`GuardError` unless the body of a mutating request is (empty or) JSON,
    within ``max_bytes`` and :data:`MAX_JSON_DEPTH`. ``form_ok`` (Flower's API, whose scripts
    send query strings and forms): any body goes when the request carries an ``Authorization``
    header (which a cross-site form cannot set) or comes from no web page (no ``Origin`` nor
    ``Referer``: a script)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise GuardError(413, "too_large", f"request body over {max_bytes} bytes")
    data = request.get_data(cache=True)
    if len(data) > max_bytes:
        raise GuardError(413, "too_large", f"request body over {max_bytes} bytes")
    headers = request.headers
    script = headers.get("Authorization") or not (headers.get("Origin") or headers.get("Referer"))
    if form_ok and script and not request.is_json:
        return
    if not request.is_json:
        raise GuardError(403, "json_required", "a control request must send Content-Type: application/json")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise GuardError(400, "bad_request", f"JSON nested deeper than {MAX_JSON_DEPTH}")


# -- installation ---------------------------------------------------------------------------


def _settings() -> Settings:
    settings: Settings = current_app.extensions["jobqueue_monitor"].settings
    return settings


def _before() -> Any:
    from monitor.web.responses import error_response

    settings = _settings()
    try:
        if request.method in MUTATING_METHODS:
            check_site(settings, request.headers, require_local_host=True)
            spec = spec_for(current_app, request.endpoint)
            check_body(settings.monitor_max_body_bytes, form_ok=bool(spec and spec.extra.get("form")))
        elif request.path == "/ws":
            check_site(settings, request.headers, require_local_host=False)
    except GuardError as exc:
        if request.path == "/ws":
            abort(exc.status)
        return error_response(exc.status, exc.code, exc.message)
    return None


def _after(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    return response


def install(app: Flask) -> None:
    """Put the front door on ``app``: strict JSON both ways, the request checks, the headers."""
    provider = StrictJSONProvider(app)
    provider.sort_keys = False
    app.json = provider
    app.config["MAX_CONTENT_LENGTH"] = app.extensions["jobqueue_monitor"].settings.monitor_max_body_bytes
    app.before_request(_before)
    app.after_request(_after)
