"""The REST API (see docs/api.md): read the store, act through Celery.

Reads come from the store only. Actions go to the cluster (submit: the client API, cancel:
:meth:`JobHandle.cancel`, worker controls: Celery's remote control); the store learns the outcome
from events, like for any other client, so the API never invents state.
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
from jobqueue.errors import QueueFull, QuotaExceeded, SubmitError
from jobqueue.shared import queued
from jobqueue.states import FINAL_JOB_STATES, JobStatus
from monitor.metrics import history
from monitor.store import JOB_SORTS
from monitor.web import schemas
from monitor.web.access import current_identity
from monitor.web.broker import queue_depths
from monitor.web.eta import (
    annotate,
    busy_until,
    cold_loads,
    consumers_per_queue,
    first_start_in,
    store_estimates,
)
from monitor.web.fleet_capabilities import WAITING, annotate_waiting, waiting_reasons
from monitor.web.responses import error_response
from monitor.web.routes import Limit, Role, route
from monitor.web.schemas import int_query
from monitor.web.tenancy import FLEET, own_ids, redact_worker, redact_workers, scope

bp = Blueprint("api", __name__)

#: Most jobs one POST may submit.
MAX_SUBMIT_COUNT = 1000
#: The fields ``POST /api/jobs`` takes (any other is refused); docs/api.md and the OpenAPI
#: document list the same (tests/test_docs_reference.py checks both).
SUBMIT_FIELDS = frozenset({"service", "payload", "priority", "queue", "timeout", "count", "workflow_id", "step",
                           "webhook_url", "requires", "tenant"})
#: Largest page of jobs.
MAX_LIMIT = 1000
#: What every control declares besides its role: rate limited, refused in read-only mode.
CONTROL = {"limit": Limit.CONTROL, "control": True}


class ApiError(Exception):
    """An error the API reports as a JSON body with a status code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def ctx() -> Any:
    return current_app.extensions["jobqueue_monitor"]


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


def state_snapshot(finished_limit: int = 200, tenant: str | None = None) -> dict[str, Any]:
    """The whole state at one seq, with ETAs filled in (shared by /api/state and /ws); as a
    caller confined to ``tenant`` sees it (:mod:`monitor.web.tenancy`)."""
    c = ctx()
    snapshot = c.store.snapshot(finished_limit=finished_limit, tenant=tenant)
    if tenant is not None:  # its queued jobs' places are those among every queued job
        placed = {e["id"]: e for e in queue_estimates(time.time())}
        for job in snapshot["jobs"]:
            if job["id"] in placed:
                job.update(queue_position=placed[job["id"]]["queue_position"], eta_seconds=placed[job["id"]].get("eta_seconds"))
        snapshot["workers"] = redact_workers(snapshot["workers"], tenant)
        return dict(snapshot)
    medians = {s["service"]: s["median"] for s in snapshot["services"]}
    running = {j["id"]: j for j in snapshot["jobs"] if j["status"] == JobStatus.PROCESSING}
    annotate(snapshot["jobs"], medians, consumers_per_queue(snapshot["workers"]),
             busy_until(snapshot["workers"], running, medians), cold_loads(snapshot["workers"]))
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


@route(bp, "/api/state", role=Role.VIEWER, summary="Everything at one sequence number",
       query=(int_query("finished_limit", 0, 100_000),), response=schemas.STATE, errors=(400,))
def state() -> Any:
    """Everything at sequence N: ``{"seq", "machines", "workers", "jobs"}``."""
    return jsonify(state_snapshot(_int_arg("finished_limit", 200, 0, 100_000), scope()))


@route(bp, "/api/machines", role=Role.VIEWER, summary="Machines", response=schemas.MACHINES)
def machines() -> Any:
    return jsonify({"machines": ctx().store.machines()})


@route(bp, "/api/workers", role=Role.VIEWER, summary="Workers", response=schemas.WORKERS)
def workers() -> Any:
    return jsonify({"workers": redact_workers(ctx().store.workers(), scope())})


@route(bp, "/api/workers/<path:name>", role=Role.VIEWER, summary="One worker", response=schemas.WORKER,
       errors=(404,))
def worker(name: str) -> Any:
    found = ctx().store.worker(name)
    if found is None:
        raise ApiError(404, "not_found", f"no worker {name!r}")
    return jsonify(found if scope() is None else redact_worker(found))


@route(bp, "/api/jobs", role=Role.VIEWER, summary="Jobs, filtered, sorted and paginated",
       query=schemas.JOBS_QUERY, response=schemas.JOB_PAGE, errors=(400,))
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
    tenant = _tenant_filter()
    found, total = ctx().store.jobs(
        state=states or None, service=request.args.get("service") or None,
        worker=request.args.get("worker") or None, machine=request.args.get("machine") or None,
        since=_float_arg("since"), until=_float_arg("until"), q=request.args.get("q") or None,
        workflow=request.args.get("workflow") or None, name=request.args.get("name") or None,
        queue=request.args.get("queue") or None, tenant=tenant, limit=limit, offset=offset,
        sort=sort, descending=order == "desc",
    )
    _annotate_queued(found)
    return jsonify({"jobs": found, "total": total, "limit": limit, "offset": offset, "sort": sort, "order": order})


def _tenant_filter() -> str | None:
    """The tenant ``/api/jobs`` lists: a confined caller's own (its ``?tenant=`` may only
    narrow to nothing), or the one a caller who sees all asks for."""
    own, asked = scope(), request.args.get("tenant") or None
    if own is not None and asked is not None and asked != own:
        return ""  # a name no tenant has (TENANT_PATTERN): nothing matches
    return own or asked


@route(bp, "/api/jobs/<job_id>", role=Role.VIEWER, summary="One job with its timeline", response=schemas.JOB,
       errors=(404,))
def job(job_id: str) -> Any:
    found = ctx().store.job(job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    found["children"] = own_ids(found["children"], scope())
    _annotate_queued([found])
    return jsonify(found)


@route(bp, "/api/jobs/<job_id>/canvas", role=Role.VIEWER, summary="The chain, group or chord a task belongs to",
       response=schemas.CANVAS, errors=(404,))
def canvas(job_id: str) -> Any:
    """Every task of the canvas ``job_id`` belongs to, from its root, each with its parent."""
    found = ctx().store.canvas(job_id)
    if found is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    mine = set(own_ids([node["id"] for node in found["nodes"]], scope()))
    return jsonify({**found, "nodes": [node for node in found["nodes"] if node["id"] in mine]})


@route(bp, "/api/waiting", role=Role.VIEWER, summary="Queued jobs no online worker can run, and why",
       response=schemas.WAITING)
def waiting() -> Any:
    """``{"waiting": {job id: reason}}``: the queued jobs no online worker can run, and why."""
    store, tenant = ctx().store, scope()
    retrying, _ = store.jobs(state=[JobStatus.RETRYING.value], limit=MAX_LIMIT, tenant=tenant)
    queued_jobs = [j for j in store.queued_jobs() if tenant is None or j["tenant"] == tenant]
    return jsonify({"waiting": waiting_reasons(queued_jobs + retrying, store.workers())})


@route(bp, "/api/estimates", role=Role.VIEWER, summary="Queue position and expected wait of every queued job",
       response=schemas.ESTIMATES)
def estimates() -> Any:
    """``{"at", "jobs": {id: {"position", "wait", "load"}}}``: every queued job's place and expected
    wait (s from ``at``; null: unknown), ``load`` of it a checkpoint load (warm routing)."""
    now, estimated = time.time(), queue_estimates(time.time())
    tenant = scope()
    if tenant is not None:  # positions stay those in the whole queue: other jobs wait ahead too
        mine = ctx().store.job_tenants([j["id"] for j in estimated])
        estimated = [j for j in estimated if mine.get(j["id"]) == tenant]
    jobs = {j["id"]: {"position": j["queue_position"], "wait": j.get("eta_seconds"), "load": j.get("load_seconds", 0.0)}
            for j in estimated}
    return jsonify({"at": now, "jobs": jobs})


@route(bp, "/api/workflows/<workflow_id>", role=Role.VIEWER, summary="A workflow's steps",
       response=schemas.WORKFLOW, errors=(404,))
def workflow(workflow_id: str) -> Any:
    """A workflow's known steps in step order, its status and ``total_steps``."""
    found = ctx().store.workflow(workflow_id, scope())
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


@route(bp, "/api/queues", role=Role.VIEWER, summary="Queue depths (the whole fleet's: not for a tenant)",
       response=schemas.QUEUES, errors=(403, 503), **FLEET)
def queues() -> Any:
    depths = _depths()
    return jsonify({"queues": [{"name": name, "depth": depth} for name, depth in sorted(depths.items())]})


@route(bp, "/api/stats", role=Role.VIEWER, summary="Completion times, throughput, failure patterns, history",
       query=(int_query("hours", 1, history.KEEP_HOURS),), response=schemas.STATS, errors=(400,))
def stats() -> Any:
    """Per-service completion times (median/mean/min/max/p95), failure patterns, throughput
    and queue depths, and the hourly history that outlives pruned jobs (``?hours=``, 1..9600,
    default 168)."""
    hours = _int_arg("hours", history.DEFAULT_HOURS, 1, history.KEEP_HOURS)
    tenant = scope()
    data = ctx().store.stats(tenant=tenant)
    if tenant is not None:  # the history and the queues count every tenant's jobs
        data.update(history=[], queues={}, queues_error="a tenant sees its own jobs' statistics only")
        return jsonify(data)
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


@route(bp, "/api/jobs", method="POST", role=Role.OPERATOR, summary="Submit count jobs", body=schemas.SUBMIT,
       response=schemas.SUBMITTED, status=201, errors=(400, 403, 429), limit=Limit.SUBMIT, audit="submit", control=True)
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
    tenant = _submit_tenant(body.get("tenant"))
    ids = [str(uuid.uuid4()) for _ in range(count)]
    sent = 0
    try:
        if count > 1 and service in service_names():  # the places of all, or none
            queued.admit(ctx().celery, {service: ids}, tenant=tenant)
        for job_id in ids:
            submit_job(service, body.get("payload", {}), priority=body.get("priority"),
                       queue=body.get("queue"), timeout=body.get("timeout"),
                       workflow_id=body.get("workflow_id"), step=body.get("step"), app=ctx().celery,
                       webhook_url=body.get("webhook_url"), requires=body.get("requires"), job_id=job_id,
                       tenant=tenant)
            sent += 1
    except (QueueFull, QuotaExceeded) as exc:
        return _queue_full(exc)
    except SubmitError as exc:
        queued.forget(ctx().celery, [service], ids[sent:])  # places reserved for jobs never sent
        raise ApiError(400, "invalid_job", str(exc)) from None
    return jsonify({"jobs": [{"id": job_id} for job_id in ids]}), 201


def _submit_tenant(asked: Any) -> str | None:
    """The tenant a submit's jobs belong to: the caller's own (a tenant's key or user), or the
    one a caller without a tenant (an admin, a fleet-wide key) names; 403 when a tenant's
    caller names another."""
    own = current_identity().tenant
    if own is not None and asked is not None and asked != own:
        raise ApiError(403, "forbidden", f"this key belongs to tenant {own!r}: it cannot submit for another")
    return own if own is not None else asked


def _queue_full(exc: QueueFull | QuotaExceeded) -> Response:
    """429 with ``Retry-After``: when the first of the service's queued jobs is expected to
    start (a place frees), from the queue ETAs; else its median run time; else the default.
    A tenant over its quota of queued jobs (``quota_exceeded``): the error's own ``retry_after``."""
    if isinstance(exc, QuotaExceeded):
        response = error_response(429, "quota_exceeded", str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response
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


@route(bp, "/api/jobs/<job_id>/cancel", method="POST", role=Role.OPERATOR, summary="Cancel a job",
       body=schemas.EMPTY, response=schemas.OK, status=202, errors=(404, 409), **CONTROL, audit="cancel")
def cancel(job_id: str) -> Any:
    known = ctx().store.job(job_id, with_events=False)
    if known is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if JobStatus(known["status"]) in FINAL_JOB_STATES:
        raise ApiError(409, "already_ended", f"job {job_id} already {known['status']}")
    if not get_job(job_id, app=ctx().celery).cancel():
        raise ApiError(409, "already_ended", f"job {job_id} already ended")
    return jsonify({"ok": True}), 202


@route(bp, "/api/jobs/<job_id>/retry", method="POST", role=Role.OPERATOR, summary="Submit a job again",
       body=schemas.EMPTY, response=schemas.RETRIED, status=201, errors=(404, 409, 429), **CONTROL, audit="retry")
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
    except (QueueFull, QuotaExceeded) as exc:
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


@route(bp, "/api/workers/<path:name>/drain", method="POST", role=Role.OPERATOR, summary="Stop a worker taking jobs",
       body=schemas.EMPTY, response=schemas.CONTROL_REPLY, status=202, errors=(403, 404, 503), **CONTROL,
       **FLEET, audit="drain")
def drain(name: str) -> Any:
    """Stop the worker taking new jobs (it finishes what it runs)."""
    return _set_draining(name, True)


@route(bp, "/api/workers/<path:name>/resume", method="POST", role=Role.OPERATOR,
       summary="Let a drained worker take jobs", body=schemas.EMPTY, response=schemas.CONTROL_REPLY, status=202,
       errors=(403, 404, 503), **CONTROL, **FLEET, audit="resume")
def resume(name: str) -> Any:
    """Let a drained worker take new jobs again."""
    return _set_draining(name, False)


@route(bp, "/api/workers/<path:name>/shutdown", method="POST", role=Role.ADMIN, summary="Shut a worker down",
       body=schemas.EMPTY, response=schemas.OK, status=202, errors=(404,), **CONTROL, audit="shutdown")
def shutdown(name: str) -> Any:
    _worker_or_404(name)
    ctx().celery.control.shutdown(destination=[name])
    return jsonify({"ok": True}), 202


# -- health and metrics --------------------------------------------------------------------


@route(bp, "/healthz", role=Role.PUBLIC, summary="Liveness of collector and writer (details only to viewers)",
       response=schemas.HEALTH, errors=(503,))
def healthz() -> Any:
    c = ctx()
    collector = c.collector.stats() if c.collector is not None else None
    ok = collector is None or (collector["alive"] and c.writer is not None and c.writer.alive)
    leadership = getattr(c.writer, "leadership", None)
    body = {"ok": bool(ok), "seq": c.store.seq(), "collector": collector,
            "repair": c.repair_stats(), "uptime": round(time.time() - c.started_at, 3),
            "role": "single" if leadership is None else ("standby" if c.writer.standing_by else "leader"),
            "lease": None if leadership is None else {**leadership.stats(), "buffered": c.writer.buffered}}
    return jsonify(body if _sees_details() else public_health(body)), 200 if ok else 503


def _sees_details() -> bool:
    from monitor.web.access import current_identity

    return current_identity().role.allows(Role.VIEWER)


def public_health(body: dict[str, Any]) -> dict[str, Any]:
    """What ``/healthz`` tells anyone: up or not, and whether collector and repair run (no
    error texts, counts or addresses)."""
    collector, repair = body.get("collector"), body.get("repair")
    return {"ok": body["ok"], "seq": body["seq"],
            "collector": None if collector is None else {k: collector.get(k) for k in ("alive", "connected")},
            "repair": None if repair is None else {"runs": repair.get("runs")}, "uptime": body["uptime"],
            "role": body["role"]}


@route(bp, "/metrics", role=Role.VIEWER, summary="Prometheus metrics (also the metrics token; not for a tenant)",
       content="text/plain", scrape=True, errors=(403,), **FLEET)
def metrics() -> Any:
    from monitor.metrics.prometheus import exposition

    body, content_type = exposition(ctx().registry, request.headers.get("Accept"))
    # content_type, not mimetype: Flask would append a second charset.
    return Response(body, content_type=content_type)
