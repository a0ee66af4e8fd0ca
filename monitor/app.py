"""The monitor's Flask app factory.

``create_app(settings)`` builds an app on a store; the server (:mod:`monitor.server`) also
hands it the running writer, collector and repair so ``/healthz`` and ``/metrics`` can report
on them. Everything per app lives in ``app.extensions["jobqueue_monitor"]``; nothing is a
module global.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from jobqueue.config import Settings
from jobqueue.errors import LeaseLost
from monitor.ingest.hub import ChangeHub
from monitor.store import Store


@dataclass
class MonitorContext:
    """What the views of one app need: settings, store, change hub, Celery, background parts."""

    settings: Settings
    store: Store
    hub: ChangeHub
    writer: Any = None
    collector: Any = None
    repair: Any = None
    own_store: bool = False
    started_at: float = field(default_factory=time.time)
    registry: Any = None
    _celery: Any = None
    #: Set when the server stops: open websocket streams end.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def celery(self) -> Any:
        """The monitor's Celery app (no tasks), built on first use."""
        if self._celery is None:
            from monitor.web.broker import monitor_celery_app

            self._celery = monitor_celery_app(self.settings)
        return self._celery

    def repair_stats(self) -> dict[str, Any] | None:
        if self.repair is None:
            return None
        return {"runs": self.repair.runs, "last": self.repair.last, "last_error": self.repair.last_error}

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()
        if self.own_store:
            self.store.close()


def create_app(
    config: Settings | Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    hub: ChangeHub | None = None,
    writer: Any = None,
    collector: Any = None,
    repair: Any = None,
    celery_app: Any = None,
) -> Flask:
    """Build the monitor app. ``config`` is a :class:`Settings` or overrides for
    ``Settings.from_env``; ``store`` defaults to one on ``settings.monitor_db``.

    In order: the settings, the app's :class:`MonitorContext` (with its metrics registry),
    the security guard and the routes, then the error handlers."""
    if isinstance(config, Settings):
        settings = config.resolved()
    else:
        settings = Settings.from_env(**dict(config or {}))
    app = Flask("monitor")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    context = MonitorContext(
        settings=settings,
        store=store or Store.from_settings(settings),
        hub=hub or ChangeHub(),
        writer=writer,
        collector=collector,
        repair=repair,
        own_store=store is None,
        _celery=celery_app,
    )
    from monitor.metrics.prometheus import Sources, build_registry
    from monitor.web.broker import queue_depths
    from monitor.web.eta import store_estimates
    from monitor.web.fleet_capabilities import online_capabilities

    context.registry = build_registry(context, Sources(queue_depths, store_estimates, online_capabilities))
    app.extensions["jobqueue_monitor"] = context
    _register_routes(app)
    _register_error_handlers(app)
    return app


def _register_routes(app: Flask) -> None:
    """The guard first (it checks every request), then the API, previews, dead letters, OpenAPI,
    the websocket, webhook attempts, job payloads and, when present, the dashboard's views."""
    from monitor.web import api, guard, ws

    guard.install(app)
    app.register_blueprint(api.bp)
    from monitor.web import live_previews as previews
    app.register_blueprint(previews.bp)
    from monitor.web import deadletters, openapi

    app.register_blueprint(deadletters.bp)
    app.register_blueprint(openapi.bp)
    ws.register(app)
    from monitor.web import webhook_attempts as webhooks
    app.register_blueprint(webhooks.bp)
    from monitor.web import broker_page, job_payload, remote

    app.register_blueprint(job_payload.bp)
    app.register_blueprint(broker_page.bp)
    app.register_blueprint(remote.bp)
    try:
        from monitor.web import views
    except ImportError:
        views = None  # type: ignore[assignment]
    if views is not None and hasattr(views, "bp"):
        app.register_blueprint(views.bp)
    from monitor.web import security

    security.install(app)  # last: it reads every route's declaration


def _register_error_handlers(app: Flask) -> None:
    """Errors of the API, ``/healthz`` and ``/metrics`` answer in the API's JSON error shape
    (other pages keep Flask's); an unexpected exception answers 500 with an id found in the log."""
    from monitor.web.responses import error_response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if not (request.path.startswith("/api") or request.path in ("/healthz", "/metrics")):
            return exc
        return error_response(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"),
                              exc.description or "")

    @app.errorhandler(LeaseLost)
    def _standby(exc: LeaseLost) -> Response:
        # A standby monitor (docs/deployment.md, "Two monitors behind one address") reads but
        # does not write: the leader does; a load balancer that prefers it sends the retry there.
        response = error_response(503, "standby", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The exception text stays in the log: it may name paths or internals of this host.
        error_id = uuid.uuid4().hex[:12]
        app.logger.exception("unhandled error %s on %s", error_id, request.path)
        return error_response(500, "internal_error", f"internal error (error id {error_id}, see the monitor's log)")


def print_roles_table() -> None:
    """Print the roles table of docs/security.md (:func:`monitor.web.openapi.roles_table`) of a
    monitor app on a throwaway store."""
    import tempfile

    from monitor.web.openapi import roles_table

    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(monitor_db=f"sqlite:///{folder}/roles.db").resolved())
        print(roles_table(app))
        app.extensions["jobqueue_monitor"].close()
