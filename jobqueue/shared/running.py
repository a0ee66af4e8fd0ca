"""The running jobs of each tenant, for its quota of running jobs (``JOBQUEUE_TENANT_QUOTAS``'s
``running``).

One sorted set per tenant in the result backend's Redis
(:func:`jobqueue.shared.records.tenant_running_key`): member a job id, score the last time its
worker said it holds the job. The rule:

* a worker claims a place when it receives a job of a tenant with a quota, before the job is
  accepted (:func:`claim`, one Lua script: at the quota nothing is added, and two workers at
  the last place cannot both get it); a job that already holds a place (redelivered) counts once;
* it releases the place when the attempt ends (:func:`release`), whatever the end;
* while it holds the job it refreshes the score (:func:`refresh`); an entry not refreshed for
  ``stale_after`` seconds belongs to a worker that died and is pruned at the next claim, so a
  killed worker blocks its tenant's place for that long at most (its job is redelivered after
  ``JOBQUEUE_VISIBILITY_TIMEOUT`` and claims again).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jobqueue.shared.records import tenant_running_key

#: The claim script (see the file for its arguments).
CLAIM_LUA = (Path(__file__).with_name("running_claim.lua")).read_text()


def claim(client: Any, tenant: str, job_id: str, quota: int, *, stale_after: float, expires: int,
          now: float | None = None) -> tuple[bool, int]:
    """Claim a running place for ``job_id`` of ``tenant``: ``(granted, running now)``."""
    now = time.time() if now is None else now
    granted, running = client.register_script(CLAIM_LUA)(
        keys=[tenant_running_key(tenant)], args=[now, now - stale_after, quota, job_id, expires])
    return bool(int(granted)), int(running)


def release(client: Any, tenant: str, job_id: str) -> None:
    """Give ``job_id``'s place back (its attempt ended)."""
    client.zrem(tenant_running_key(tenant), job_id)


def refresh(client: Any, held: Mapping[str, str], now: float | None = None) -> None:
    """Mark every job of ``held`` (job id -> tenant) as still held now (one round trip)."""
    if not held:
        return
    now = time.time() if now is None else now
    with client.pipeline(transaction=False) as pipe:
        for job_id, tenant in held.items():
            pipe.zadd(tenant_running_key(tenant), {job_id: now}, xx=True)
        pipe.execute()


def running(client: Any, tenants: Iterable[str], *, stale_after: float, now: float | None = None) -> dict[str, int]:
    """Jobs running now per tenant (stale entries left out)."""
    names = list(tenants)
    horizon = (time.time() if now is None else now) - stale_after
    with client.pipeline(transaction=False) as pipe:
        for tenant in names:
            pipe.zcount(tenant_running_key(tenant), f"({horizon}", "+inf")
        replies = pipe.execute()
    return {tenant: int(n) for tenant, n in zip(names, replies, strict=True)}
