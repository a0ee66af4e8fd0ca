"""The broker page: every task queue as the broker holds it (names from the broker's own
bindings, depth per priority level, consumers), and a purge that empties every level.

``GET /api/broker`` and the page ``/broker`` read :func:`jobqueue.transport.broker_queues.list_queues`
(Redis keys, or RabbitMQ's management API when ``JOBQUEUE_RABBITMQ_MANAGEMENT_URL`` is set), not
the workers' memory; the consumers of a Redis queue (which Redis cannot tell) are the online
workers the store knows to consume it. ``POST /api/queues/<name>/purge`` (admins, audited) runs
:func:`jobqueue.client.purge.purge`: the jobs it removes are recorded cancelled.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, render_template

from jobqueue.client.purge import purge
from jobqueue.transport.broker_queues import BrokerError, list_queues
from monitor.web.responses import error_response
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import BROKER, EMPTY, PURGED
from monitor.web.tenancy import FLEET

bp = Blueprint("broker", __name__)


def _ctx() -> Any:
    return current_app.extensions["jobqueue_monitor"]


def _consumers(workers: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Queue → the online (or draining) workers the store knows to consume it."""
    out: dict[str, list[str]] = {}
    for worker in workers:
        if worker.get("status") in ("online", "draining"):
            for queue in worker.get("queues") or []:
                out.setdefault(queue, []).append(worker["name"])
    return out


@route(bp, "/api/broker", role=Role.VIEWER, summary="The broker's queues: depth per priority level, consumers",
       response=BROKER, errors=(403, 503), **FLEET)
def broker() -> Any:
    ctx = _ctx()
    try:
        queues = list_queues(ctx.celery, ctx.store.known_queues(), ctx.settings.rabbitmq_management_url or None)
    except BrokerError as exc:
        return error_response(503, "broker_unavailable", str(exc))
    workers = _consumers(ctx.store.workers())
    rows = []
    for queue in queues:
        row = queue.as_dict()
        row["workers"] = sorted(workers.get(queue.name, []))
        if row["consumers"] is None:
            row["consumers"] = len(row["workers"])
        rows.append(row)
    return jsonify({"transport": "redis" if ctx.settings.is_redis else "amqp", "queues": rows})


@route(bp, "/api/queues/<path:name>/purge", method="POST", role=Role.ADMIN,
       summary="Remove every message waiting in a queue (every priority level); its jobs are cancelled",
       body=EMPTY, response=PURGED, errors=(400, 403, 503), limit=Limit.CONTROL, control=True, audit="purge", **FLEET)
def purge_route(name: str) -> Any:
    try:
        report = purge(name, app=_ctx().celery)
    except BrokerError as exc:
        return error_response(503, "broker_unavailable", str(exc))
    g.jobqueue_audit_detail = f"removed={report.removed} jobs={len(report.jobs)}"
    return jsonify(report.as_dict())


@route(bp, "/broker", role=Role.VIEWER, summary="The broker page", content="text/html", page=True, errors=(403,),
       **FLEET)
def broker_page() -> str:
    return render_template("broker.html", page="broker")
