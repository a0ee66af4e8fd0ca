"""Remote control of any Celery worker, as Flower offers it: what a worker holds and how it is
set up (``GET /api/workers/<name>/inspect``), its pool (grow, shrink, autoscale, restart), the
queues it consumes (add, cancel), rate and time limits per task type, and revoking any task
(with terminate and a signal). Each goes through the role check, rate limit and audit trail of
every control (:mod:`monitor.web.routes`); bad input is a 400 before anything is sent, a worker
that does not answer a 504.

Celery's broadcast answers ``[{"<worker>": {"ok": "..."}}]`` or ``{"error": "..."}`` per worker;
the replies are passed on as they came, and an ``error`` reply makes the answer 409.
"""

from __future__ import annotations

import signal
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request

from monitor.web.responses import error_response
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import (
    CONTROL_REPLY,
    INSPECT,
    LIMITS_REQUEST,
    POOL_REQUEST,
    QUEUE_REQUEST,
    REVOKE_REQUEST,
)
from monitor.web.tenancy import FLEET

bp = Blueprint("remote", __name__)

#: Seconds to wait for a worker's answer.
REPLY_TIMEOUT = 3.0
#: What ``inspect`` asks a worker for (Celery's inspect methods), and the keys of the answer.
INSPECTIONS = ("stats", "registered", "active", "reserved", "scheduled", "revoked", "active_queues", "conf")
#: Signals a revoke with terminate may send.
SIGNALS = frozenset({"SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGHUP"})
CONTROL = {"limit": Limit.CONTROL, "control": True}
#: A worker's and a task type's controls act on the whole fleet: a tenant's key gets 403
#: (:mod:`monitor.web.tenancy`); a revoke names a job, so another tenant's is a 404.
FLEET_CONTROL = {**CONTROL, **FLEET}


class BadControl(Exception):
    """A control request that cannot be sent as it is (400)."""


class UnknownWorker(Exception):
    """A worker the monitor has never seen (404)."""


def _ctx() -> Any:
    return current_app.extensions["jobqueue_monitor"]


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadControl("expected a JSON object body")
    return body


def _int(body: dict[str, Any], key: str, low: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10_000:
        raise BadControl(f"{key!r} must be an integer {low}..10000")
    return value


def _answer(replies: list[Any] | None) -> Any:
    """202 with the replies; 504 when nobody answered; 409 when a worker answered an error."""
    if not replies:
        return error_response(504, "no_reply", f"the worker did not answer within {REPLY_TIMEOUT:.0f} s")
    failed = [r for reply in replies if isinstance(reply, dict) for r in reply.values()
              if isinstance(r, dict) and "error" in r]
    if failed:
        return error_response(409, "refused", "; ".join(str(r["error"]) for r in failed))
    return jsonify({"ok": True, "replies": replies}), 202


def _known(name: str) -> None:
    """A worker the monitor never saw is a 404 (nothing is broadcast to it)."""
    if _ctx().store.worker(name) is None:
        raise UnknownWorker(name)


def _control(name: str, method: str, **arguments: Any) -> Any:
    _known(name)
    control = _ctx().celery.control
    return _answer(control.broadcast(method, arguments=arguments, destination=[name], reply=True,
                                     timeout=REPLY_TIMEOUT))


@bp.errorhandler(BadControl)
def _bad(exc: BadControl) -> Any:
    return error_response(400, "bad_request", str(exc))


@bp.errorhandler(UnknownWorker)
def _unknown(exc: UnknownWorker) -> Any:
    return error_response(404, "not_found", f"no worker {exc.args[0]!r}")


@route(bp, "/api/workers/<path:name>/inspect", role=Role.VIEWER,
       summary="What a worker holds and how it is set up (Celery's inspect)", response=INSPECT, errors=(403, 404, 504),
       **FLEET)
def inspect(name: str) -> Any:
    """Stats, registered tasks, active/reserved/scheduled/revoked lists, consumed queues and
    configuration, asked of the worker itself (any Celery worker)."""
    _known(name)
    # limit=1: each question returns at the worker's first (only) answer, not at the timeout
    asked = _ctx().celery.control.inspect(destination=[name], timeout=REPLY_TIMEOUT, limit=1)
    out: dict[str, Any] = {"worker": name}
    for what in INSPECTIONS:
        reply = getattr(asked, what)() or {}
        out[what] = reply.get(name)
        if what == INSPECTIONS[0] and out[what] is None:  # it did not answer: ask nothing more
            return error_response(504, "no_reply", f"worker {name!r} did not answer within {REPLY_TIMEOUT:.0f} s")
    return jsonify(out)


@route(bp, "/api/workers/<path:name>/pool", method="POST", role=Role.ADMIN,
       summary="Grow, shrink, autoscale or restart a worker's pool", body=POOL_REQUEST, response=CONTROL_REPLY,
       status=202, errors=(400, 403, 404, 409, 504), **FLEET_CONTROL, audit="pool")
def pool(name: str) -> Any:
    body = _body()
    action = body.get("action")
    if action in ("grow", "shrink"):
        return _control(name, f"pool_{action}", n=_int(body, "n", 1, 1))
    if action == "autoscale":
        low, high = _int(body, "min", 0), _int(body, "max", 1)
        if low > high:
            raise BadControl(f"autoscale min ({low}) is above max ({high})")
        return _control(name, "autoscale", max=high, min=low)
    if action == "restart":
        return _control(name, "pool_restart", modules=None, reload=False, reloader=None)
    raise BadControl("'action' must be grow, shrink, autoscale or restart")


@route(bp, "/api/workers/<path:name>/consumers", method="POST", role=Role.OPERATOR,
       summary="Start or stop a worker consuming a queue", body=QUEUE_REQUEST, response=CONTROL_REPLY, status=202,
       errors=(400, 403, 404, 409, 504), **FLEET_CONTROL, audit="consumer")
def consumers(name: str) -> Any:
    body = _body()
    queue, action = body.get("queue"), body.get("action")
    if not isinstance(queue, str) or not 0 < len(queue) <= 255:
        raise BadControl("'queue' must be a queue name")
    if action == "add":
        return _control(name, "add_consumer", queue=queue)
    if action == "cancel":
        return _control(name, "cancel_consumer", queue=queue)
    raise BadControl("'action' must be add or cancel")


@route(bp, "/api/task-types/<path:task>/limits", method="POST", role=Role.ADMIN,
       summary="Set a task type's rate limit or time limits on its workers", body=LIMITS_REQUEST,
       response=CONTROL_REPLY, status=202, errors=(400, 403, 409, 504), **FLEET_CONTROL, audit="limits")
def limits(task: str) -> Any:
    body = _body()
    worker = body.get("worker")
    destination = [worker] if isinstance(worker, str) and worker else None
    control = _ctx().celery.control
    replies: list[Any] = []
    if "rate_limit" in body:
        rate = body["rate_limit"]
        if not isinstance(rate, str) or not (rate == "" or rate.replace(".", "", 1).rstrip("smh/").isdigit()):
            raise BadControl("'rate_limit' must be like '10/m', '2/s' or '' (none)")
        replies += control.broadcast("rate_limit", arguments={"task_name": task, "rate_limit": rate or None},
                                     destination=destination, reply=True, timeout=REPLY_TIMEOUT) or []
    if "time_limit" in body or "soft_time_limit" in body:
        hard, soft = body.get("time_limit"), body.get("soft_time_limit")
        for key, value in (("time_limit", hard), ("soft_time_limit", soft)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise BadControl(f"{key!r} must be a positive number of seconds or null")
        if hard is not None and soft is not None and soft > hard:
            raise BadControl("'soft_time_limit' must not exceed 'time_limit'")
        replies += control.broadcast("time_limit", arguments={"task_name": task, "hard": hard, "soft": soft},
                                     destination=destination, reply=True, timeout=REPLY_TIMEOUT) or []
    if "rate_limit" not in body and "time_limit" not in body and "soft_time_limit" not in body:
        raise BadControl("send 'rate_limit' and/or 'time_limit'/'soft_time_limit'")
    return _answer(replies)


@route(bp, "/api/tasks/<job_id>/revoke", method="POST", role=Role.OPERATOR,
       summary="Revoke any task, optionally terminating it with a signal", body=REVOKE_REQUEST,
       response=CONTROL_REPLY, status=202, errors=(400, 404), **CONTROL, audit="revoke")
def revoke(job_id: str) -> Any:
    body = _body()
    terminate = body.get("terminate", False)
    sig = body.get("signal", "SIGTERM")
    if not isinstance(terminate, bool) or sig not in SIGNALS:
        raise BadControl(f"'terminate' must be true or false and 'signal' one of {sorted(SIGNALS)}")
    if _ctx().store.job(job_id, with_events=False) is None:
        return error_response(404, "not_found", f"no job {job_id!r}")
    _ctx().celery.control.revoke(job_id, terminate=terminate, signal=getattr(signal, sig).name)
    return jsonify({"ok": True, "replies": []}), 202


@route(bp, "/workers/<path:name>", role=Role.VIEWER, summary="One worker's page: its pool, queues, tasks, setup",
       content="text/html", page=True, errors=(403,), **FLEET)
def worker_page(name: str) -> str:
    return render_template("worker.html", page="worker", worker_name=name)
