"""Puts access control on a monitor app: login, single sign-on, keys and audit routes, the session signer,
the access check, the audit trail and the rate limits — all driven by the routes'
declarations (:mod:`monitor.web.routes`). Called once every other route is registered.
"""

from __future__ import annotations

from flask import Flask, Response

from monitor.web import access, audit, keys, limits, login, sessions, sso, tenancy
from monitor.web.routes import collect


def _api_error(exc: Exception) -> Response:
    from monitor.web.responses import error_response

    return error_response(exc.status, exc.code, exc.message)  # type: ignore[attr-defined]


def install(app: Flask) -> None:
    """Register the access routes and hooks on ``app`` (after the guard's)."""
    from monitor.web.api import ApiError

    settings = app.extensions["jobqueue_monitor"].settings
    for blueprint in (login.bp, sso.bp, keys.bp, audit.bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(ApiError, _api_error)
    sessions.install(app, settings)
    sso.install(app, settings)
    collect(app)
    access.install(app)
    tenancy.install(app)  # right after the access check: it confines whom that let in
    audit.install(app)
    limits.install(app, settings)
