"""The REST API (see docs/api.md): read the store, act through Celery.

Reads come from the store only. Actions go to the cluster: submitting uses the client API
(:func:`jobqueue.client.jobs.submit_job`), cancel uses :meth:`JobHandle.cancel`, worker controls use
Celery's remote control. The store then learns the outcome from events, like for any other
client, so the API never invents state.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from jobqueue.client.jobs import get_job, submit_job
from jobqueue.client.rerun import resubmit_arguments
from jobqueue.client.services import service_names
from jobqueue.errors import QueueFull, SubmitError
from jobqueue.shared import queued
from jobqueue.states import FINAL_JOB_STATES, JobStatus
from monitor.metrics import history
from monitor.store import JOB_SORTS
from monitor.web.auth import mutating
from monitor.web.broker import queue_depths
from monitor.web.eta import annotate, busy_until, consumers_per_queue, first_start_in, store_estimates
from monitor.web.fleet_capabilities import WAITING, annotate_waiting, waiting_reasons

bp = Blueprint("api", __name__)

#: Most jobs one POST may submit.
MAX_SUBMIT_COUNT = 1000
#: The fields ``POST /api/jobs`` takes (any other is refused); docs/api.md and the OpenAPI
#: document list the same (tests/test_docs_reference.py checks both).
SUBMIT_FIELDS = frozenset({"service", "payload", "priority", "queue", "timeout", "count", "workflow_id", "step",
                           "webhook_url", "requires"})
#: Largest page of jobs.
MAX_LIMIT = 1000


class ApiError(Exception):
    """An error the API reports as a JSON body with a status code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def ctx() -> Any:
    return current_app.extensions["jobqueue_monitor"]


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message)


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ApiError(400, "bad_request", f"{name} must be finite")
    return value


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"{name} must be {low}..{high}")
    return value


def state_snapshot(finished_limit: int = 200) -> dict[str, Any]:
    """The whole state at one seq, with ETAs filled in (shared by /api/state and /ws)."""
    c = ctx()
    snapshot = c.store.snapshot(finished_limit=finished_limit)
    medians = {s["service"]: s["median"] for s in snapshot["services"]}
    running = {j["id"]: j for j in snapshot["jobs"] if j["status"] == JobStatus.PROCESSING}
    annotate(snapshot["jobs"], medians, consumers_per_queue(snapshot["workers"]),
             busy_until(snapshot["workers"], running, medians))
    result: dict[str, Any] = snapshot
    return result


def queue_estimates(now: float) -> list[dict[str, Any]]:
    """Every queued job with its ``queue_position`` and ``eta_seconds`` as of ``now``
    (:func:`monitor.web.eta.store_estimates`)."""
    return store_estimates(ctx().store, now)


def _annotate_queued(found: list[dict[str, Any]]) -> None:
    """Queue position and expected wait of the queued jobs in ``found``, among all queued."""
    wanted = {j["id"]: j for j in found if j["status"] == JobStatus.QUEUED}
    store = ctx().store
    annotate_waiting(found, store.workers() if any(j.get("requires") and j["status"] in WAITING for j in found) else [])
    if not wanted:
        return
    for other in queue_estimates(time.time()):
        if other["id"] in wanted:
            wanted[other["id"]].update(queue_position=other["queue_position"], eta_seconds=other.get("eta_seconds"))


# -- reads ---------------------------------------------------------------------------------


@bp.get("/api/state")
def state() -> Any:
    """Everything at sequence N: ``{"seq", "machines", "workers", "jobs"}``."""
    return jsonify(state_snapshot(_int_arg("finished_limit", 200, 0, 100_000)))


@bp.get("/api/machines")
def machines() -> Any:
    return jsonify({"machines": ctx().store.machines()})


@bp.get("/api/workers")
def workers() -> Any:
    return jsonify({"workers": ctx().store.workers()})


@bp.get("/api/workers/<path:name>")
def worker(name: str) -> Any:
    found = ctx().store.worker(name)
    if found is None:
        raise ApiError(404, "not_found", f"no worker {name!r}")
    return jsonify(found)


@bp.get("/api/jobs")
def jobs() -> Any:
    """Jobs filtered by state, service, worker, machine, time range and text; paginated."""
    states = [s for part in request.args.getlist("state") for s in part.split(",") if s]
    valid = {s.value for s in JobStatus}
    unknown = [s for s in states if s not in valid]
    if unknown:
        raise ApiError(400, "bad_request", f"unknown state(s) {unknown}; known: {sorted(valid)}")
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, 10**9)
    sort = request.args.get("sort") or "submitted"
    if sort not in JOB_SORTS:
        raise ApiError(400, "bad_request", f"sort must be one of {sorted(JOB_SORTS)}")
    order = request.args.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "bad_request", "order must be asc or desc")
    found, total = ctx().store.jobs(
        state=states or None, service=request.args.get("service") or None,
        worker=request.args.get("worker") or None, machine=request.args.get("machine") or None,
        since=_float_arg("since"), until=_float_arg("until"), q=request.args.get("q") or None,
        workflow=request.args.get("workflow") or None, limit=limit, offset=offset,
        sort=sort, descending=order == "desc",
    )
    _annotate_queued(found)
    return jsonify({"jobs": found, "total": total, "limit": limit, "offset": offset, "sort": sort, "order": order})


@bp.get("/api/jobs/<job_id>")
def job(job_id: str) -> Any:
    found = ctx().store.job(job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    _annotate_queued([found])
    return jsonify(found)


@bp.get("/api/waiting")
def waiting() -> Any:
    """``{"waiting": {job id: reason}}``: the queued jobs no online worker can run, and why."""
    store = ctx().store
    retrying, _ = store.jobs(state=[JobStatus.RETRYING.value], limit=MAX_LIMIT)
    return jsonify({"waiting": waiting_reasons(store.queued_jobs() + retrying, store.workers())})


@bp.get("/api/estimates")
def estimates() -> Any:
    """``{"at": server time, "jobs": {job id: {"position", "wait"}}}``: every queued job's
    queue position and expected wait (seconds from ``at``; null when unknown). Pages show these
    and count them down; they never compute a queue ETA themselves."""
    now = time.time()
    jobs = {j["id"]: {"position": j["queue_position"], "wait": j.get("eta_seconds")} for j in queue_estimates(now)}
    return jsonify({"at": now, "jobs": jobs})


@bp.get("/api/workflows/<workflow_id>")
def workflow(workflow_id: str) -> Any:
    """A workflow's known steps in step order, its status and ``total_steps``."""
    found = ctx().store.workflow(workflow_id)
    if found is None:
        raise ApiError(404, "not_found", f"no workflow {workflow_id!r}")
    _annotate_queued(found["steps"])
    return jsonify(found)


def _queue_names() -> list[str]:
    return sorted(set(ctx().store.known_queues()) | set(service_names()))


def _depths() -> dict[str, int]:
    try:
        return queue_depths(ctx().celery, _queue_names())
    except Exception as exc:
        raise ApiError(503, "broker_unavailable", f"cannot read queue depths: {exc}") from None


@bp.get("/api/queues")
def queues() -> Any:
    depths = _depths()
    return jsonify({"queues": [{"name": name, "depth": depth} for name, depth in sorted(depths.items())]})


@bp.get("/api/stats")
def stats() -> Any:
    """Per-service completion times (median/mean/min/max/p95), failure patterns, throughput
    and queue depths, and the hourly history that outlives pruned jobs (``?hours=``, 1..9600,
    default 168)."""
    hours = _int_arg("hours", history.DEFAULT_HOURS, 1, history.KEEP_HOURS)
    data = ctx().store.stats()
    data["history"] = history.read(ctx().store, hours=hours)
    try:
        data["queues"] = _depths()
    except ApiError as exc:
        data["queues"] = {}
        data["queues_error"] = exc.message
    return jsonify(data)


# -- actions -------------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "expected a JSON object body")
    return body


@bp.post("/api/jobs")
@mutating
def submit() -> Any:
    """Submit ``count`` jobs of ``service`` with ``payload``; 201 with their ids."""
    body = _json_body()
    service = body.get("service")
    if not isinstance(service, str) or not service:
        raise ApiError(400, "bad_request", "'service' must be a non-empty string")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SUBMIT_COUNT:
        raise ApiError(400, "bad_request", f"'count' must be an integer 1..{MAX_SUBMIT_COUNT}")
    unknown = set(body) - SUBMIT_FIELDS
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s) {sorted(unknown)}")
    ids = [str(uuid.uuid4()) for _ in range(count)]
    sent = 0
    try:
        if count > 1 and service in service_names():  # the places of all, or none
            queued.admit(ctx().celery, {service: ids})
        for job_id in ids:
            submit_job(service, body.get("payload", {}), priority=body.get("priority"),
                       queue=body.get("queue"), timeout=body.get("timeout"),
                       workflow_id=body.get("workflow_id"), step=body.get("step"), app=ctx().celery,
                       webhook_url=body.get("webhook_url"), requires=body.get("requires"), job_id=job_id)
            sent += 1
    except QueueFull as exc:
        return _queue_full(exc)
    except SubmitError as exc:
        queued.forget(ctx().celery, [service], ids[sent:])  # places reserved for jobs never sent
        raise ApiError(400, "invalid_job", str(exc)) from None
    return jsonify({"jobs": [{"id": job_id} for job_id in ids]}), 201


def _queue_full(exc: QueueFull) -> Response:
    """429 with ``Retry-After``: when the first of the service's queued jobs is expected to
    start (a place frees), from the queue ETAs; else its median run time; else the default."""
    medians = ctx().store.service_medians()
    median = medians.get(exc.service)
    seconds = first_start_in(queue_estimates(time.time()), exc.service, median)
    if seconds is None:
        seconds = median if median else exc.retry_after
    exc.retry_after = max(1.0, float(math.ceil(seconds)))
    response = error_response(429, "queue_full", f"{exc.service}: queue full ({exc.queued} queued, cap {exc.cap}); "
                                                 f"retry in {exc.retry_after:.0f} s")
    response.headers["Retry-After"] = str(int(exc.retry_after))
    return response


@bp.post("/api/jobs/<job_id>/cancel")
@mutating
def cancel(job_id: str) -> Any:
    known = ctx().store.job(job_id, with_events=False)
    if known is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if JobStatus(known["status"]) in FINAL_JOB_STATES:
        raise ApiError(409, "already_ended", f"job {job_id} already {known['status']}")
    if not get_job(job_id, app=ctx().celery).cancel():
        raise ApiError(409, "already_ended", f"job {job_id} already ended")
    return jsonify({"ok": True}), 202


@bp.post("/api/jobs/<job_id>/retry")
@mutating
def retry(job_id: str) -> Any:
    """Submit a new job with the same service, payload and every submit option as ``job_id``
    (:func:`jobqueue.client.rerun.resubmit_arguments`); works for a job in any state."""
    known = ctx().store.job(job_id, with_events=False)
    if known is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    kwargs = ctx().celery.AsyncResult(job_id).kwargs
    if not isinstance(kwargs, dict) or "payload" not in kwargs:
        raise ApiError(409, "payload_unknown", f"the result backend no longer holds job {job_id}'s payload")
    try:
        handle = submit_job(**resubmit_arguments(job_id, kwargs, known["service"]), app=ctx().celery)
    except QueueFull as exc:
        return _queue_full(exc)
    except SubmitError as exc:
        raise ApiError(400, "invalid_job", str(exc)) from None
    return jsonify({"id": handle.id}), 201


def _worker_or_404(name: str) -> dict[str, Any]:
    found = ctx().store.worker(name)
    if found is None:
        raise ApiError(404, "not_found", f"no worker {name!r}")
    worker: dict[str, Any] = found
    return worker


def _set_draining(name: str, draining: bool) -> Any:
    """Cancel (draining) or re-add the worker's consumer on each of its queues, and record
    the choice in the store; answers 202 with the workers' control replies."""
    found = _worker_or_404(name)
    control = ctx().celery.control
    method = control.cancel_consumer if draining else control.add_consumer
    replies: list[Any] = []
    for queue in found["queues"] or []:
        replies.extend(method(queue, destination=[name], reply=True, timeout=2.0) or [])
    writer = ctx().writer
    if writer is not None and writer.alive:
        writer.call(lambda tx: tx.set_draining(name, draining))
    else:  # no writer in this process: the one exception the writer's docstring names
        ctx().store.set_draining(name, draining)
    return jsonify({"ok": True, "replies": replies}), 202


@bp.post("/api/workers/<path:name>/drain")
@mutating
def drain(name: str) -> Any:
    """Stop the worker taking new jobs (it finishes what it runs)."""
    return _set_draining(name, True)


@bp.post("/api/workers/<path:name>/resume")
@mutating
def resume(name: str) -> Any:
    """Let a drained worker take new jobs again."""
    return _set_draining(name, False)


@bp.post("/api/workers/<path:name>/shutdown")
@mutating
def shutdown(name: str) -> Any:
    _worker_or_404(name)
    ctx().celery.control.shutdown(destination=[name])
    return jsonify({"ok": True}), 202


# -- health and metrics --------------------------------------------------------------------


@bp.get("/healthz")
def healthz() -> Any:
    c = ctx()
    collector = c.collector.stats() if c.collector is not None else None
    ok = collector is None or (collector["alive"] and c.writer is not None and c.writer.alive)
    body = {"ok": bool(ok), "seq": c.store.seq(), "collector": collector,
            "repair": c.repair_stats(), "uptime": round(time.time() - c.started_at, 3)}
    return jsonify(body), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Any:
    from monitor.metrics.prometheus import exposition

    body, content_type = exposition(ctx().registry, request.headers.get("Accept"))
    # content_type, not mimetype: Flask would append a second charset.
    return Response(body, content_type=content_type)
