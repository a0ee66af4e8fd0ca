"""Flower 2.x's REST API, control side, under ``/flower`` (see :mod:`monitor.web.flower_api`):
same paths, arguments (query string or form body; ``apply``'s JSON body) and answers.

Tasks: ``apply`` (publish and wait for the result), ``async-apply`` and ``send-task`` (publish),
``abort`` (``AbortableAsyncResult``), ``revoke`` (``terminate``, ``signal``), ``rate-limit`` and
``timeout`` (``workername`` required, as in Flower). Workers: ``shutdown``, ``pool/restart``,
``pool/grow``, ``pool/shrink`` (``n``), ``pool/autoscale`` (``min``, ``max``),
``queue/add-consumer`` and ``queue/cancel-consumer`` (``queue``).

As in Flower: ``apply``/``async-apply`` need the task registered in the monitor's Celery app
(404 ``Unknown task`` otherwise; ``send-task`` publishes any name); a worker control names a
worker the monitor knows (404); a worker's ``error`` reply is a 403 with its reason. Beyond
Flower, so bad input changes nothing: a revoke of an id nobody saw is a 404, ``n`` below 1 and
an autoscale with ``min`` > ``max`` are 400 before anything is sent, a worker that does not
answer is a 504 (Flower: 403 "Unknown reason"), an unknown signal is a 400. Every control has
its role (operator: tasks and consumers; admin: workers' pools, shutdown, limits), the control
rate limit and the audit trail (:mod:`monitor.web.routes`).
"""

from __future__ import annotations

import datetime
import signal
from typing import Any

from celery.contrib.abortable import AbortableAsyncResult
from flask import Blueprint, Response, request

from monitor.web.flower_common import (
    PREFIX,
    REPLY_TIMEOUT,
    FlowerError,
    answered_ok,
    arg,
    as_json,
    as_text,
    ctx,
    flag,
    number,
    worker_error,
)
from monitor.web.guard import strict_loads
from monitor.web.remote import SIGNALS
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import str_query
from monitor.web.tenancy import FLEET

bp = Blueprint("flower_control", __name__)

OBJECT = {"type": "object"}
#: Flower's controls take query strings and forms (:func:`monitor.web.guard.check_body`).
CONTROL: dict[str, Any] = {"limit": Limit.CONTROL, "control": True, "response": OBJECT, "extra": {"form": True}}
FLEET_CONTROL: dict[str, Any] = {**CONTROL, "extra": {**FLEET["extra"], "form": True}}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@bp.errorhandler(FlowerError)
def _refused(exc: FlowerError) -> Response:
    return as_text(exc.message, exc.status)


# -- tasks ------------------------------------------------------------------------------------


def _task_args() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``args``, ``kwargs`` and the publish options of a JSON body (Flower's ``get_task_args``)."""
    try:
        options = strict_loads(request.get_data() or b"{}")
    except ValueError as exc:
        raise FlowerError(400, str(exc)) from exc
    if not isinstance(options, dict):
        raise FlowerError(400, "invalid options")
    args, kwargs = options.pop("args", []), options.pop("kwargs", {})
    if not isinstance(args, list):
        raise FlowerError(400, "args must be an array")
    if not isinstance(kwargs, dict):
        raise FlowerError(400, "kwargs must be an object")
    return args, kwargs, options


def _normalise(options: dict[str, Any]) -> None:
    """``eta``/``expires`` as Flower's date format, ``countdown`` a number (400 otherwise)."""
    try:
        if "eta" in options:
            options["eta"] = datetime.datetime.strptime(options["eta"], DATE_FORMAT)
        if "countdown" in options:
            options["countdown"] = float(options["countdown"])
        if "expires" in options:
            try:
                options["expires"] = float(options["expires"])
            except ValueError:
                options["expires"] = datetime.datetime.strptime(options["expires"], DATE_FORMAT)
    except (TypeError, ValueError) as exc:
        raise FlowerError(400, "Invalid option") from exc


def _check_name(taskname: str) -> str:
    """A task name as Celery can route it: printable, at most 255 characters (else 404)."""
    if not taskname or len(taskname) > 255 or not taskname.isprintable():
        raise FlowerError(404, "Unknown task")
    return taskname


def _registered(taskname: str) -> Any:
    task = ctx().celery.tasks.get(_check_name(taskname))
    if task is None:
        raise FlowerError(404, f"Unknown task '{taskname}'")
    return task


def _with_state(result: Any, response: dict[str, Any]) -> Response:
    from celery.backends.base import DisabledBackend

    if not isinstance(result.backend, DisabledBackend):
        response["state"] = result.state
    return as_json(response)


@route(bp, f"{PREFIX}/api/task/apply/<path:taskname>", method="POST", role=Role.OPERATOR,
       summary="Flower: run a registered task and wait for its result", errors=(400, 403, 404),
       audit="flower_apply", **FLEET_CONTROL)
def apply(taskname: str) -> Response:
    from celery.exceptions import TimeoutError as CeleryTimeout

    _check_name(taskname)
    args, kwargs, options = _task_args()
    task = _registered(taskname)
    timeout = options.pop("timeout", None)
    try:
        timeout = float(timeout) if timeout is not None else None
    except (TypeError, ValueError) as exc:
        raise FlowerError(400, "Invalid timeout") from exc
    _normalise(options)
    result = task.apply_async(args=args, kwargs=kwargs, **options)
    response: dict[str, Any] = {"task-id": result.task_id}
    try:
        result.get(propagate=False, timeout=timeout)
    except CeleryTimeout:
        response["state"] = result.state
        return as_json(response)
    value = result.result
    response["result"] = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    if result.state == "FAILURE":
        response["traceback"] = result.traceback
    return _with_state(result, response)


@route(bp, f"{PREFIX}/api/task/async-apply/<path:taskname>", method="POST", role=Role.OPERATOR,
       summary="Flower: publish a registered task", errors=(400, 403, 404), audit="flower_apply", **FLEET_CONTROL)
def async_apply(taskname: str) -> Response:
    _check_name(taskname)
    args, kwargs, options = _task_args()
    task = _registered(taskname)
    _normalise(options)
    result = task.apply_async(args=args, kwargs=kwargs, **options)
    return _with_state(result, {"task-id": result.task_id})


@route(bp, f"{PREFIX}/api/task/send-task/<path:taskname>", method="POST", role=Role.OPERATOR,
       summary="Flower: publish a task by name (registered here or not)", errors=(400, 403),
       audit="flower_apply", **FLEET_CONTROL)
def send_task(taskname: str) -> Response:
    _check_name(taskname)
    args, kwargs, options = _task_args()
    _normalise(options)
    if taskname not in ctx().celery.tasks and not {"queue", "routing_key", "exchange"} & set(options):
        options["queue"] = _seen_queue(taskname)
    result = ctx().celery.send_task(taskname, args=args, kwargs=kwargs, **options)
    return _with_state(result, {"task-id": result.task_id})


def _seen_queue(taskname: str) -> str:
    """Where a task the monitor's app does not route goes: the queue it was last seen on, else
    Celery's default ``celery`` (the monitor's own default queue is jobqueue's)."""
    rows, _ = ctx().store.jobs(name=taskname, limit=1)
    return str(rows[0]["queue"]) if rows and rows[0].get("queue") else "celery"


def _known_task(job_id: str) -> None:
    if ctx().store.job(job_id, with_events=False) is None:
        raise FlowerError(404, f"Unknown task '{job_id}'")


@route(bp, f"{PREFIX}/api/task/abort/<job_id>", method="POST", role=Role.OPERATOR,
       summary="Flower: ask an abortable task to stop", errors=(403, 404, 503), audit="flower_abort", **CONTROL)
def abort(job_id: str) -> Response:
    from celery.backends.base import DisabledBackend

    _known_task(job_id)
    result = AbortableAsyncResult(job_id, app=ctx().celery)
    if isinstance(result.backend, DisabledBackend):
        raise FlowerError(503, "no result backend is configured")
    result.abort()
    return as_json({"message": f"Aborted '{job_id}'"})


@route(bp, f"{PREFIX}/api/task/revoke/<job_id>", method="POST", role=Role.OPERATOR,
       summary="Flower: revoke a task, optionally terminating it with a signal",
       query=(str_query("terminate"), str_query("signal")), errors=(400, 403, 404), audit="flower_revoke", **CONTROL)
def revoke(job_id: str) -> Response:
    terminate = flag("terminate")
    sig = (arg("signal") or "SIGTERM").upper()
    sig = sig if sig.startswith("SIG") else f"SIG{sig}"
    if sig not in SIGNALS:
        raise FlowerError(400, f"Invalid signal '{sig}', expected one of {', '.join(sorted(SIGNALS))}")
    _known_task(job_id)
    ctx().celery.control.revoke(job_id, terminate=terminate, signal=getattr(signal, sig).name)
    return as_json({"message": f"Revoked '{job_id}'"})


def _limit_target(taskname: str) -> str:
    """The worker a limit is for, once it and the task type are known: registered in the
    monitor's app (Flower's only test), seen in the events, or registered on that worker."""
    workername = str(arg("workername", required=True))
    _known_worker(workername)
    c = ctx()
    if taskname in c.celery.tasks or taskname in c.store.task_names():
        return workername
    asked = c.celery.control.inspect(destination=[workername], timeout=REPLY_TIMEOUT, limit=1).registered() or {}
    # a limited task is listed as "name [rate_limit=5/m]"
    if taskname not in {str(entry).split(" ")[0] for entry in asked.get(workername) or []}:
        raise FlowerError(404, f"Unknown task '{taskname}'")
    return workername


def _worker_reply(workername: str, replies: list[Any] | None, failure: str, success: str | None = None) -> Response:
    """Flower's answer to a control: ``success`` (default: the worker's own ``ok`` message), or
    ``failure`` with the reason, 504 when nobody answered and 403 when the worker refused."""
    ok = answered_ok(workername, replies)
    if ok is None:
        return as_text(f"{failure}: {worker_error(workername, replies)}", 504 if not replies else 403)
    return as_json({"message": ok["ok"] if success is None else success})


@route(bp, f"{PREFIX}/api/task/timeout/<path:taskname>", method="POST", role=Role.ADMIN,
       summary="Flower: set a task type's soft and hard time limits on a worker",
       query=(str_query("workername"), str_query("hard"), str_query("soft")), errors=(400, 403, 404, 504),
       audit="flower_limits", **FLEET_CONTROL)
def timeout(taskname: str) -> Response:
    workername = _limit_target(taskname)
    hard, soft = number("hard", float), number("soft", float)
    for name, value in (("hard", hard), ("soft", soft)):
        if value is not None and value <= 0:
            raise FlowerError(400, f"'{name}' must be a positive number of seconds")
    if hard is not None and soft is not None and soft > hard:
        raise FlowerError(400, "'soft' must not exceed 'hard'")
    replies = ctx().celery.control.time_limit(taskname, soft=soft, hard=hard, reply=True, destination=[workername],
                                              timeout=REPLY_TIMEOUT)
    return _worker_reply(workername, replies, "Failed to set timeouts")


@route(bp, f"{PREFIX}/api/task/rate-limit/<path:taskname>", method="POST", role=Role.ADMIN,
       summary="Flower: set a task type's rate limit on a worker",
       query=(str_query("workername"), str_query("ratelimit")), errors=(400, 403, 404, 504),
       audit="flower_limits", **FLEET_CONTROL)
def rate_limit(taskname: str) -> Response:
    workername = _limit_target(taskname)
    rate = str(arg("ratelimit", required=True))
    if not rate.replace(".", "", 1).rstrip("smh/").isdigit():
        raise FlowerError(400, f"Invalid rate limit '{rate}', expected like '10/m', '2/s' or '100'")
    replies = ctx().celery.control.rate_limit(taskname, rate, reply=True, destination=[workername],
                                              timeout=REPLY_TIMEOUT)
    return _worker_reply(workername, replies, "Failed to set rate limit")


# -- workers ----------------------------------------------------------------------------------


def _known_worker(workername: str) -> None:
    """404 unless the events told of the worker or it answers a ping (Flower: its inspect cache)."""
    if ctx().store.worker(workername) is not None:
        return
    if not ctx().celery.control.ping(destination=[workername], timeout=1.0, limit=1):
        raise FlowerError(404, f"Unknown worker '{workername}'")


def _broadcast(workername: str, method: str, **arguments: Any) -> list[Any] | None:
    replies = ctx().celery.control.broadcast(method, arguments=arguments, destination=[workername], reply=True,
                                             timeout=REPLY_TIMEOUT, limit=1)
    return list(replies) if replies else None


@route(bp, f"{PREFIX}/api/worker/shutdown/<path:workername>", method="POST", role=Role.ADMIN,
       summary="Flower: shut a worker down", errors=(403, 404), audit="flower_shutdown", **FLEET_CONTROL)
def shutdown(workername: str) -> Response:
    _known_worker(workername)
    ctx().celery.control.broadcast("shutdown", destination=[workername])
    return as_json({"message": "Shutting down!"})


@route(bp, f"{PREFIX}/api/worker/pool/restart/<path:workername>", method="POST", role=Role.ADMIN,
       summary="Flower: restart a worker's pool", errors=(403, 404, 504), audit="flower_pool", **FLEET_CONTROL)
def pool_restart(workername: str) -> Response:
    _known_worker(workername)
    replies = _broadcast(workername, "pool_restart", reload=False)
    return _worker_reply(workername, replies, f"Failed to restart the '{workername}' pool",
                         f"Restarting '{workername}' worker's pool")


def _resize(workername: str, method: str, verb: str) -> Response:
    _known_worker(workername)
    n = number("n", int, 1)
    if n < 1:
        raise FlowerError(400, f"'n' must be a positive number of processes, not {n}")
    replies = _broadcast(workername, method, n=n)
    return _worker_reply(workername, replies, f"Failed to {verb.lower()} '{workername}' worker's pool",
                         f"{verb}ing '{workername}' worker's pool by {n}")


@route(bp, f"{PREFIX}/api/worker/pool/grow/<path:workername>", method="POST", role=Role.ADMIN,
       summary="Flower: add processes to a worker's pool", query=(str_query("n"),), errors=(400, 403, 404, 504),
       audit="flower_pool", **FLEET_CONTROL)
def pool_grow(workername: str) -> Response:
    return _resize(workername, "pool_grow", "Grow")


@route(bp, f"{PREFIX}/api/worker/pool/shrink/<path:workername>", method="POST", role=Role.ADMIN,
       summary="Flower: remove processes from a worker's pool", query=(str_query("n"),),
       errors=(400, 403, 404, 504), audit="flower_pool", **FLEET_CONTROL)
def pool_shrink(workername: str) -> Response:
    return _resize(workername, "pool_shrink", "Shrink")


@route(bp, f"{PREFIX}/api/worker/pool/autoscale/<path:workername>", method="POST", role=Role.ADMIN,
       summary="Flower: set a worker's autoscale bounds", query=(str_query("min"), str_query("max")),
       errors=(400, 403, 404, 504), audit="flower_pool", **FLEET_CONTROL)
def pool_autoscale(workername: str) -> Response:
    _known_worker(workername)
    low, high = number("min", int, required=True), number("max", int, required=True)
    if low < 0 or high < 1 or low > high:
        raise FlowerError(400, f"autoscale needs 0 <= min <= max and max >= 1 (min={low}, max={high})")
    replies = _broadcast(workername, "autoscale", min=low, max=high)
    return _worker_reply(workername, replies, f"Failed to autoscale '{workername}' worker",
                         f"Autoscaling '{workername}' worker (min={low}, max={high})")


def _consumer(workername: str, method: str, failure: str) -> Response:
    _known_worker(workername)
    queue = str(arg("queue", required=True))
    if len(queue) > 255:
        raise FlowerError(400, "'queue' must be a queue name")
    replies = _broadcast(workername, method, queue=queue)
    return _worker_reply(workername, replies, failure.format(queue=queue, worker=workername))


@route(bp, f"{PREFIX}/api/worker/queue/add-consumer/<path:workername>", method="POST", role=Role.OPERATOR,
       summary="Flower: make a worker consume a queue", query=(str_query("queue"),), errors=(400, 403, 404, 504),
       audit="flower_consumer", **FLEET_CONTROL)
def add_consumer(workername: str) -> Response:
    return _consumer(workername, "add_consumer", "Failed to add '{queue}' consumer to '{worker}' worker")


@route(bp, f"{PREFIX}/api/worker/queue/cancel-consumer/<path:workername>", method="POST", role=Role.OPERATOR,
       summary="Flower: make a worker stop consuming a queue", query=(str_query("queue"),),
       errors=(400, 403, 404, 504), audit="flower_consumer", **FLEET_CONTROL)
def cancel_consumer(workername: str) -> Response:
    return _consumer(workername, "cancel_consumer", "Failed to cancel '{queue}' consumer from '{worker}' worker")
