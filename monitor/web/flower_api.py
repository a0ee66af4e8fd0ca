"""Flower 2.x's REST API, read side: the same paths, parameters and JSON shapes, mounted under
``/flower`` (our own ``/api/workers``, ``/api/tasks``... have other shapes), so a script written
for Flower works by changing only its base URL to ``<monitor>/flower``.

- ``GET /flower/api/workers`` (``refresh``, ``status``, ``workername``): each worker's answers to
  Celery's inspect (``stats``, ``active_queues``, ``registered``, ``conf``; for one worker also
  ``scheduled``, ``active``, ``reserved``, ``revoked``) and ``timestamp`` -- always asked live
  (Flower answers its cache unless ``refresh``); ``status=true``: name → alive.
- ``GET /flower/api/tasks`` (``limit``, ``offset``, ``sort_by``, ``workername``, ``taskname``,
  ``state``, ``received_start``/``received_end``, ``search``): id → task dict, newest first.
- ``GET /flower/api/task/types``, ``/flower/api/task/info/<id>``, ``/flower/api/task/result/<id>``
  (``timeout``), ``/flower/api/queues/length``, ``/flower/healthcheck``.

Task dicts are built by :mod:`monitor.web.flower_tasks` from the events the store kept. The
controls are in :mod:`monitor.web.flower_control`. ``docs/flower.md`` maps every route.
"""

from __future__ import annotations

import math
import time
from typing import Any

from celery.result import AsyncResult
from flask import Blueprint, Response

from monitor.web import flower_search as fs
from monitor.web import flower_tasks as ft
from monitor.web.flower_common import (
    PREFIX,
    REPLY_TIMEOUT,
    FlowerError,
    arg,
    as_json,
    as_text,
    ctx,
    flag,
    number,
)
from monitor.web.routes import Role, route
from monitor.web.schemas import int_query, str_query
from monitor.web.tenancy import FLEET, own_ids, scope

bp = Blueprint("flower_api", __name__)

#: Inspect methods asked of every worker, and the task lists asked only of one (Flower's).
INSPECT_ALL = ("stats", "active_queues", "registered", "conf")
INSPECT_ONE = ("scheduled", "active", "reserved", "revoked")
OBJECT = {"type": "object"}
#: Longest ``/api/task/result/<id>?timeout=`` may wait (Flower sets no bound: one request could
#: hold a server thread for good).
MAX_RESULT_WAIT = 60.0
TASKS_QUERY = (int_query("limit", 0, 10**9), int_query("offset", 0, 10**9),
               str_query("sort_by", sorted(ft.SORT_KEYS | {f"-{k}" for k in ft.SORT_KEYS})),
               str_query("workername"), str_query("taskname"), str_query("state"), str_query("received_start"),
               str_query("received_end"), str_query("search"))


class SearchRefused(Exception):
    """A search Flower refuses: 400 with ``{"error": message}``, as Flower answers it."""


@bp.errorhandler(FlowerError)
def _refused(exc: FlowerError) -> Response:
    return as_text(exc.message, exc.status)


@bp.errorhandler(SearchRefused)
def _search_refused(exc: SearchRefused) -> Response:
    return as_json({"error": str(exc)}, 400)


def inspect_workers(workername: str | None) -> dict[str, dict[str, Any]]:
    """Every answering worker's (or ``workername``'s) inspect replies, as Flower keeps them."""
    store = ctx().store
    online = [w["name"] for w in store.workers() if w.get("status") in ("online", "draining")]
    expected = 1 if workername else max(len(online), 1)
    asked = ctx().celery.control.inspect(destination=[workername] if workername else None, timeout=REPLY_TIMEOUT,
                                         limit=expected)
    info: dict[str, dict[str, Any]] = {}
    for method in INSPECT_ALL + (INSPECT_ONE if workername else ()):
        replies = (getattr(asked, method)(safe=True) if method == "active" else getattr(asked, method)()) or {}
        for worker, reply in replies.items():
            if reply is None or isinstance(reply, dict) and "error" in reply and len(reply) == 1:
                continue
            if method == "stats":
                ((reply.get("consumer") or reply).get("broker") or {}).pop("alternates", None)
            info.setdefault(worker, {})[method] = reply
            info[worker]["timestamp"] = time.time()
        if method == INSPECT_ALL[0] and not replies:
            break  # nobody answered stats: ask nothing more
    return info


@route(bp, f"{PREFIX}/api/workers", role=Role.VIEWER, summary="Flower: workers and their inspect answers",
       query=(str_query("refresh"), str_query("status"), str_query("workername")), response=OBJECT,
       errors=(400, 403, 404, 504), **FLEET)
def workers() -> Response:
    flag("refresh")  # always live here; validated as Flower does
    workername = arg("workername") or None
    store = ctx().store
    if flag("status"):
        return as_json({w["name"]: w.get("status") in ("online", "draining") for w in store.workers()})
    info = inspect_workers(workername)
    if workername:
        if workername in info:
            return as_json({workername: info[workername]})
        if store.worker(workername) is None:
            raise FlowerError(404, f"Unknown worker '{workername}'")
        raise FlowerError(504, f"worker '{workername}' did not answer within {REPLY_TIMEOUT:.0f} s")
    return as_json(info)


def _matching(tenant: str | None) -> list[dict[str, Any]]:
    """The store's jobs matching Flower's filters and search (:mod:`monitor.web.flower_search`),
    at most :data:`flower_tasks.MAX_SORTED`."""
    try:
        query = fs.parse(arg("search"))
    except fs.QueryError as exc:
        raise SearchRefused(str(exc)) from exc
    state = arg("state")
    state = None if state in (None, "", "All") else state
    statuses = ft.STATUSES.get(state.upper()) if state else None
    if state and statuses is None:
        return []
    worker, name = arg("workername"), arg("taskname")
    try:
        start, end = ft.received_bound(arg("received_start")), ft.received_bound(arg("received_end"))
    except ValueError as exc:
        raise FlowerError(400, "Invalid received_start or received_end, expected format 'YYYY-MM-DD HH:MM'") from exc
    rows, _ = ctx().store.jobs(state=statuses, worker=None if worker in (None, "", "All") else worker,
                               name=None if name in (None, "", "All") else name, tenant=tenant, limit=ft.MAX_SORTED)
    rows = [r for r in rows if ft.in_received_range(r, start, end)]
    if query is None:
        return rows
    built = ((r, full_task(r["id"], tenant)) for r in rows)  # kept on the row: tasks() answers with it
    return [{**r, "flower_task": task} for r, task in built if task is not None and fs.matches(query, task)]


def _page(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sort_by = arg("sort_by")
    if sort_by and sort_by.lstrip("-") not in ft.SORT_KEYS:
        raise FlowerError(400, f"Invalid sort_by '{sort_by}', expected one of {', '.join(sorted(ft.SORT_KEYS))}")
    if sort_by:
        rows.sort(key=lambda r: ft.sort_key(r, sort_by.lstrip("-")), reverse=sort_by.startswith("-"))
    else:  # Flower: the last event's time, newest first
        rows.sort(key=lambda r: (max((r.get(k) or 0) for k in ("submitted_at", "received_at", "started_at",
                                                               "finished_at")), r["id"]), reverse=True)
    offset = max(number("offset", int, 0), 0)
    limit = number("limit", int)
    return rows[offset:None if limit is None else offset + max(limit, 0)]


def full_task(job_id: str, tenant: str | None) -> dict[str, Any] | None:
    """Flower's dict of one task, or None when the store does not hold it."""
    store = ctx().store
    job = store.job(job_id)
    if job is None:
        return None
    job["children"] = own_ids(job["children"], tenant)
    return ft.task_dict(job)


@route(bp, f"{PREFIX}/api/tasks", role=Role.VIEWER, summary="Flower: tasks, filtered, sorted and paged",
       query=TASKS_QUERY, response=OBJECT, errors=(400, 403))
def tasks() -> Response:
    tenant = scope()
    out: dict[str, Any] = {}
    for row in _page(_matching(tenant)):
        found = row["flower_task"] if "flower_task" in row else full_task(row["id"], tenant)
        if found is not None:
            out[row["id"]] = found
    return as_json(out)


@route(bp, f"{PREFIX}/api/task/types", role=Role.VIEWER, summary="Flower: every task name seen",
       response=OBJECT, errors=(403,))
def task_types() -> Response:
    return as_json({"task-types": ctx().store.task_names(scope())})


@route(bp, f"{PREFIX}/api/task/info/<job_id>", role=Role.VIEWER, summary="Flower: one task as its events say",
       response=OBJECT, errors=(403, 404))
def task_info(job_id: str) -> Response:
    found = full_task(job_id, scope())
    if found is None:
        raise FlowerError(404, f"Unknown task '{job_id}'")
    return as_json(found)


def _result(result: Any, response: dict[str, Any]) -> dict[str, Any]:
    value = result.result
    value = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    response["result"] = value
    if result.state == "FAILURE":
        response["traceback"] = result.traceback
    return response


@route(bp, f"{PREFIX}/api/task/result/<job_id>", role=Role.VIEWER,
       summary="Flower: a task's state and result from the result backend", query=(str_query("timeout"),),
       response=OBJECT, errors=(400, 403, 404, 503))
def task_result(job_id: str) -> Response:
    from celery.backends.base import DisabledBackend

    timeout = number("timeout", float)
    if timeout is not None and (not math.isfinite(timeout) or timeout > MAX_RESULT_WAIT):
        raise FlowerError(400, f"Invalid argument 'timeout': at most {MAX_RESULT_WAIT:.0f} seconds")
    result = AsyncResult(job_id, app=ctx().celery)
    if isinstance(result.backend, DisabledBackend):
        raise FlowerError(503, "no result backend is configured")
    response: dict[str, Any] = {"task-id": job_id, "state": result.state}
    if timeout:
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            result.get(timeout=timeout, propagate=False)
        except CeleryTimeout:
            return as_json(response)
        return as_json(_result(result, {"task-id": job_id, "state": result.state}))
    return as_json(_result(result, response) if result.ready() else response)


@route(bp, f"{PREFIX}/api/queues/length", role=Role.VIEWER,
       summary="Flower: messages waiting in each queue the workers consume", response=OBJECT, errors=(403, 503),
       **FLEET)
def queue_lengths() -> Response:
    from jobqueue.transport.broker_queues import BrokerError, list_queues

    c = ctx()
    names = sorted({q["name"] for info in inspect_workers(None).values() for q in info.get("active_queues") or []
                    if isinstance(q, dict) and q.get("name")})
    if not names:
        names = sorted({c.celery.conf.task_default_queue} | {q.name for q in c.celery.conf.task_queues or [] if q.name})
    try:
        found = {q.name: q.depth for q in list_queues(c.celery, names, c.settings.rabbitmq_management_url or None)}
    except BrokerError as exc:
        raise FlowerError(503, str(exc)) from exc
    return as_json({"active_queues": [{"name": name, "messages": found.get(name, 0)} for name in names]})


@route(bp, f"{PREFIX}/healthcheck", role=Role.PUBLIC, summary="Flower: the monitor answers", content="text/plain")
def healthcheck() -> Response:
    return Response("OK", mimetype="text/plain")

