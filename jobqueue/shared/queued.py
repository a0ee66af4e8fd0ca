"""The queued-jobs index: which jobs of each service wait for a worker, for queue caps.

One sorted set per service in the result backend's Redis
(:func:`jobqueue.shared.records.queued_key`, ``jobqueue-queued-<service>``): member a job id,
score when it entered the queue. The rule:

* a job enters at submit (:func:`admit`, one Lua script: over a cap nothing enters and
  :class:`~jobqueue.errors.QueueFull` is raised; two clients at the cap cannot both get in),
  and every step of a workflow enters with the workflow (its later steps are queued from then
  on); a batch or a workflow enters whole or not at all;
* it leaves when an attempt starts (the worker's start record, same round trip) or when it is
  cancelled (:func:`forget`);
* it enters again when it goes back to its queue: a retry or a hand-back
  (:func:`back_in_queue`, written *before* the message is re-sent, so the next start always
  comes after it);
* an entry older than the results' expiry (``result_expires``) is stale and pruned at each
  admission: the job is forgotten by then anyway (a message discarded as poison, a queue no
  worker will ever consume).

A tenant's jobs are counted the same way in one more sorted set, the tenant's
(:func:`jobqueue.shared.records.tenant_queued_key`), entered and left with the service's in
the same script or pipeline: its quota of queued jobs (``JOBQUEUE_TENANT_QUOTAS``) is a cap
on that set, and over it :class:`~jobqueue.errors.QuotaExceeded` is raised (nothing enters).

Counted per job id, the index stays true when workers die and messages are redelivered: an
entry is removed at most once, however often a job starts. A job whose worker died while
running it is not counted while its message waits for redelivery (about
``JOBQUEUE_VISIBILITY_TIMEOUT``); it was counted as running. Without a Redis result backend
there is no index and caps cannot apply (:class:`~jobqueue.errors.ConfigError`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jobqueue.errors import ConfigError, QueueFull, QuotaExceeded
from jobqueue.shared.fairshare import known_tenants
from jobqueue.shared.records import queued_key, result_client, tenant_queued_key
from jobqueue.shared.tenants import quota_for

log = logging.getLogger(__name__)

#: The admission script (see the file for its arguments).
ADMIT_LUA = (Path(__file__).with_name("queued_admit.lua")).read_text()


def expires_of(app: Any) -> int:
    """Seconds after which an entry is stale: the results' expiry (as the result backend holds
    it, in seconds: read on every submit, and Celery's configuration is slow to read)."""
    expires = getattr(getattr(app, "backend", None), "expires", None)
    return int(expires if isinstance(expires, (int, float)) and expires else app.conf.result_expires or 86400)


def caps_of(app: Any, services: Iterable[str]) -> dict[str, int]:
    """The caps that apply to ``services`` under ``app``'s settings (uncapped ones left out)."""
    settings = app.settings
    return {s: cap for s in services if (cap := settings.max_queued_for(s)) is not None}


def is_capped(app: Any, service: str, tenant: str | None) -> bool:
    """True when a job of ``service`` and ``tenant`` must be admitted (:func:`admit`): its
    service has a cap or its tenant a quota of queued jobs."""
    settings = app.settings
    return settings.max_queued_for(service) is not None or quota_for(settings, tenant).queued is not None


def queue_add(pipe: Any, service: str, job_ids: Iterable[str], expires: int, now: float | None = None,
              tenant: str | None = None) -> None:
    """Queue on ``pipe`` the entry of ``job_ids`` (no cap check: uncapped services and tenants)."""
    ids = list(job_ids)
    if ids:
        now = time.time() if now is None else now
        for key in (queued_key(service), *([tenant_queued_key(tenant)] if tenant is not None else [])):
            pipe.zadd(key, {job_id: now for job_id in ids}, nx=True)
            pipe.expire(key, expires)


def queue_remove(pipe: Any, service: str, job_id: str, tenant: str | None = None) -> None:
    """Queue on ``pipe`` the removal of ``job_id`` (its attempt starts)."""
    pipe.zrem(queued_key(service), job_id)
    if tenant is not None:
        pipe.zrem(tenant_queued_key(tenant), job_id)


def admit(app: Any, jobs: Mapping[str, list[str]], now: float | None = None, *, tenant: str | None = None) -> None:
    """Enter ``jobs`` (``{service: [job ids]}``, all of ``tenant`` when given) into the index,
    all or none.

    Raises :class:`~jobqueue.errors.QueueFull` for the first service that would go over its
    cap, :class:`~jobqueue.errors.QuotaExceeded` when the tenant would go over its quota of
    queued jobs; nothing enters then. Ids already in the index count once (a place reserved
    earlier).
    """
    client = result_client(app)
    caps = caps_of(app, jobs)
    quota = quota_for(app.settings, tenant).queued
    if client is None:
        if caps or quota is not None:
            raise ConfigError("JOBQUEUE_MAX_QUEUED and tenants' queued quotas need a Redis result backend")
        return
    services = [s for s, ids in jobs.items() if ids]
    if not services:
        return
    plan = [[caps.get(s, -1), list(jobs[s])] for s in services]
    keys = [queued_key(s) for s in services]
    if tenant is not None:
        plan.append([-1 if quota is None else quota, [i for s in services for i in jobs[s]]])
        keys.append(tenant_queued_key(tenant))
    now = time.time() if now is None else now
    script = client.register_script(ADMIT_LUA)
    index, count = script(keys=keys, args=[now, expires_of(app), json.dumps(plan)])
    if int(index) > len(services):
        assert tenant is not None and quota is not None
        raise QuotaExceeded(tenant, quota, int(count))
    if int(index):
        service = services[int(index) - 1]
        raise QueueFull(service, caps[service], int(count))


def forget(app: Any, services: Iterable[str], job_ids: Iterable[str]) -> None:
    """Remove ``job_ids`` from every index of ``services`` and of every known tenant (a cancel:
    the client does not know a job's service or tenant, and there are few of them)."""
    client = result_client(app)
    ids = list(job_ids)
    if client is None or not ids:
        return
    tenants = known_tenants(client)
    with client.pipeline(transaction=False) as pipe:
        for key in [*(queued_key(s) for s in services), *(tenant_queued_key(t) for t in tenants)]:
            pipe.zrem(key, *ids)
        pipe.execute()


def job_tenant(kwargs: Any) -> str | None:
    """The tenant of a ``run_job`` message's kwargs (its ``options["tenant"]``), or None."""
    options = kwargs.get("options") if isinstance(kwargs, dict) else None
    tenant = options.get("tenant") if isinstance(options, dict) else None
    return tenant if isinstance(tenant, str) else None


def back_in_queue(task: Any, service: Any) -> None:
    """A job goes back to its queue (retry, hand-back): enter it again, at once, before the
    message is re-sent (best effort: a failure here only undercounts)."""
    client = result_client(task.app)
    if client is None or not isinstance(service, str):
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            queue_add(pipe, service, [task.request.id], expires_of(task.app), tenant=job_tenant(task.request.kwargs))
            pipe.execute()
    except Exception:  # the job is re-sent anyway
        log.warning("job %s: could not count it as queued again", task.request.id, exc_info=True)


def counts(app: Any, services: Iterable[str], now: float | None = None) -> dict[str, int]:
    """Jobs queued now per service (stale entries left out)."""
    client = result_client(app)
    names = list(services)
    if client is None or not names:
        return {}
    horizon = (time.time() if now is None else now) - expires_of(app)
    with client.pipeline(transaction=False) as pipe:
        for service in names:
            pipe.zcount(queued_key(service), f"({horizon}", "+inf")
        replies = pipe.execute()
    return {service: int(n) for service, n in zip(names, replies, strict=True)}
