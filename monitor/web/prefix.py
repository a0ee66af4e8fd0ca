"""Serving the monitor under a path prefix (``/flower``), directly or behind a reverse proxy.

Two ways, which combine:

* ``JOBQUEUE_MONITOR_URL_PREFIX=/flower`` (``jobqueue monitor --url-prefix /flower``): the
  monitor itself answers only under ``/flower/...`` (what Flower's ``--url_prefix`` does, for a
  proxy that passes the path on unchanged). :class:`PrefixMiddleware` moves the prefix from
  ``PATH_INFO`` into ``SCRIPT_NAME``; a path outside it is a 404 naming the prefix.
* A proxy that strips its own prefix and says so in ``X-Forwarded-Prefix`` (with
  ``X-Forwarded-For``, ``-Proto`` and ``-Host``): believed only when
  ``JOBQUEUE_MONITOR_PROXY_COUNT`` says how many proxies stand in front (werkzeug's
  ``ProxyFix``); otherwise any client could set them.

Either way Flask sees the app-relative path (routes, the guard and the websocket are unchanged)
and ``request.script_root`` holds the prefix: ``url_for`` and the pages' ``<meta name="jq-base">``
(which the dashboard's scripts put before every fetch, link and websocket URL) carry it, as do
the login redirect and the cookies' ``Path`` (:func:`base_path`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from jobqueue.config import Settings
from jobqueue.errors import ConfigError

#: A prefix: ``/`` then path segments of URL-safe characters, no trailing ``/``.
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+$")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def normalise_prefix(value: str) -> str:
    """``value`` as a prefix (``flower/`` → ``/flower``; empty: none), or :class:`ConfigError`."""
    text = value.strip().strip("/")
    if not text:
        return ""
    prefix = "/" + text
    if not _PREFIX.match(prefix) or "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
        raise ConfigError(f"JOBQUEUE_MONITOR_URL_PREFIX must be a path such as /flower, got {value!r}")
    return prefix


class PrefixMiddleware:
    """Serve ``app`` under ``prefix`` only: ``/flower/x`` reaches it as ``x`` with ``SCRIPT_NAME``
    ``/flower`` (after any proxy's prefix); ``/flower`` itself redirects to ``/flower/``."""

    def __init__(self, app: WsgiApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or ""
        if path == self.prefix:
            root = environ.get("SCRIPT_NAME", "") + self.prefix + "/"
            query = environ.get("QUERY_STRING", "")
            start_response("308 Permanent Redirect", [("Location", root + ("?" + query if query else "")),
                                                      ("Content-Length", "0")])
            return [b""]
        if not path.startswith(self.prefix + "/"):
            body = f"not found: this monitor is served under {self.prefix}/\n".encode()
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
        environ["PATH_INFO"] = path[len(self.prefix):]
        return self.app(environ, start_response)


def install(app: Flask, settings: Settings) -> None:
    """Wrap ``app``'s WSGI app in the prefix, then (outermost) in the trusted proxies' headers."""
    if settings.monitor_proxy_count < 0:
        raise ConfigError(f"JOBQUEUE_MONITOR_PROXY_COUNT must be >= 0, got {settings.monitor_proxy_count}")
    prefix = normalise_prefix(settings.monitor_url_prefix)
    if prefix:
        app.wsgi_app = PrefixMiddleware(app.wsgi_app, prefix)  # type: ignore[method-assign]
    hops = settings.monitor_proxy_count
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)  # type: ignore[method-assign]
    app.context_processor(lambda: {"base_path": base_path()})


def base_path() -> str:
    """The path this request's monitor is served under (``""`` at the root): what every link,
    redirect and cookie path of this request starts with."""
    return request.script_root.rstrip("/")


def cookie_path(sub: str = "") -> str:
    """A cookie's ``Path`` for ``sub`` (e.g. ``/auth``) under the monitor's base path."""
    return (base_path() + sub) or "/"
