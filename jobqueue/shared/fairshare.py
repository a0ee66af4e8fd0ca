"""Fair share between tenants: per-tenant queues, taken in weighted turns.

A tenant's job that is not pinned goes to its tenant queue, ``<tenant>/<queue>``
(``acme/simulation``, ``acme/simulation.model.x.safetensors``), instead of ``<queue>`` (with
``JOBQUEUE_FAIR_SHARE``, the default): one Celery queue per tenant and service (or capability
queue), so the broker keeps them apart, a worker kill loses nothing (the same acks-late and
visibility rules as every queue), and queue lengths, dead letters and ``inspect`` work as for
any queue. A tenant name never holds ``/`` (:data:`~jobqueue.shared.tenants.TENANT_PATTERN`) and
a routed queue name never does either, so the split is unambiguous.

* Which tenant queues exist: every submit of a tenant's job notes its queue in one sorted set
  (:func:`~jobqueue.shared.records.tenant_queues_key`, score: the last submit). A worker
  consumes ``<tenant>/<q>`` for every ``<q>`` it consumes itself
  (:mod:`jobqueue.worker.fairshare`), so a drain, an unhealthy service or a lost model stops
  the tenant queues with their base queue.
* In what order a worker takes them (:class:`FairOrder`, asked by the Redis transport before
  each fetch): priority first, as ever (every queue's most urgent level before any queue's
  next one); within one priority level, the members of a base queue's group (the base queue
  itself for jobs without a tenant, and each tenant queue) take turns, deficit round robin:
  the member whose turn it is comes first, takes up to its weight
  (``JOBQUEUE_TENANT_QUOTAS``'s ``weight``) jobs in a row, then goes to the back. A member with
  nothing queued is skipped by the broker (BRPOP takes the first non-empty list), and keeps its
  place: a tenant that comes back gets its turn at once, never a burst beyond its weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from jobqueue.shared.records import result_client, tenant_queues_key

#: Between a tenant and the queue its job would go to otherwise.
TENANT_SEP = "/"


def tenant_queue(queue: str, tenant: str) -> str:
    """``tenant``'s queue beside ``queue``: ``acme/simulation``."""
    return f"{tenant}{TENANT_SEP}{queue}"


def split_tenant_queue(name: str) -> tuple[str | None, str]:
    """``(tenant, base queue)`` of a tenant queue; ``(None, name)`` for any other queue."""
    tenant, sep, base = name.partition(TENANT_SEP)
    return (tenant, base) if sep and tenant and base else (None, name)


def route_for_tenant(queue: str, tenant: str | None, fair_share: bool) -> str:
    """Where a job routed to ``queue`` goes: its tenant's queue under fair share, else ``queue``."""
    return tenant_queue(queue, tenant) if fair_share and tenant is not None else queue


def note_queue(pipe: Any, queue: str, expires: int, now: float | None = None) -> None:
    """Queue on ``pipe`` the note that jobs were sent to tenant queue ``queue`` (workers read
    :func:`known_queues`); ``expires``: the results' expiry, after which a note is stale."""
    if split_tenant_queue(queue)[0] is None:
        return
    pipe.zadd(tenant_queues_key(), {queue: time.time() if now is None else now})
    pipe.expire(tenant_queues_key(), expires)


def note_queues(app: Any, queues: Iterable[str]) -> None:
    """Note the tenant queues among ``queues`` (one round trip when there is one; a batch's or
    workflow's jobs)."""
    names = sorted({q for q in queues if split_tenant_queue(q)[0] is not None})
    client = result_client(app)
    if client is None or not names:
        return
    expires = int(app.conf.result_expires or 86400)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            note_queue(pipe, name, expires)
        pipe.execute()


def known_queues(client: Any, expires: int, now: float | None = None) -> list[str]:
    """The tenant queues jobs were sent to within ``expires`` seconds (older notes pruned)."""
    horizon = (time.time() if now is None else now) - expires
    with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(tenant_queues_key(), "-inf", f"({horizon}")
        pipe.zrange(tenant_queues_key(), 0, -1)
        _, names = pipe.execute()
    return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def known_tenants(client: Any) -> list[str]:
    """Every tenant with a noted queue (for a cancel, which does not know a job's tenant)."""
    names = client.zrange(tenant_queues_key(), 0, -1)
    tenants = {split_tenant_queue(n.decode() if isinstance(n, bytes) else str(n))[0] for n in names}
    return sorted(t for t in tenants if t is not None)


class FairOrder:
    """The order a worker's channel asks the broker for its queues in (see the module doc).

    Kept per channel (one worker: one consumer thread), so not locked. ``weight_of(tenant)``:
    a tenant's weight (``None``: jobs without a tenant), at least 1.
    """

    def __init__(self, weight_of: Callable[[str | None], int]) -> None:
        self._weight_of = weight_of
        #: base queue -> its members (the base itself, tenant queues) in turn order.
        self._turns: dict[str, list[str]] = {}
        #: member -> jobs it may still take in its current turn.
        self._credit: dict[str, int] = {}

    def _weight(self, member: str) -> int:
        return max(1, int(self._weight_of(split_tenant_queue(member)[0])))

    def order(self, queues: Iterable[str]) -> list[str]:
        """``queues`` (the consumer's, in its order) with each base queue's group in turn order
        at the place of the base; a tenant queue whose base is not consumed is left out."""
        active = list(queues)
        present = set(active)
        groups: dict[str, list[str]] = {}
        for name in active:
            tenant, base = split_tenant_queue(name)
            if tenant is None or base in present:
                groups.setdefault(base, []).append(name)
        out: list[str] = []
        for name in active:
            tenant, base = split_tenant_queue(name)
            if tenant is not None or base not in groups:
                continue  # a tenant queue goes with its base; one without a base not at all
            members = groups[base]
            if len(members) == 1:
                out.append(name)
                continue
            turns = self._turns.setdefault(base, [])
            turns.extend(m for m in members if m not in turns)
            out.extend(m for m in turns if m in members)
        return out

    def delivered(self, queue: str) -> None:
        """A job came from ``queue``: one less in its turn; at the end of it, to the back."""
        base = split_tenant_queue(queue)[1]
        turns = self._turns.get(base)
        if not turns or queue not in turns:
            return
        left = self._credit.get(queue, self._weight(queue)) - 1
        if left > 0:
            self._credit[queue] = left
            return
        self._credit.pop(queue, None)
        turns.remove(queue)
        turns.append(queue)
