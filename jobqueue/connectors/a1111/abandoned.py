"""Requests the worker gave up on that the WebUI will still run.

The WebUI runs a txt2img/img2img request to its end under its queue lock whatever the client
does: closing the socket of a cancelled, timed-out or stalled job does not stop it, and one
still queued would run in full ahead of the retry. So every request is written into the
worker's orphan book (:mod:`jobqueue.connectors.orphans`) before it is posted, with its task
id, and struck out once the WebUI answered it. What stays in the book is swept:

* with task ids (A1111 1.8+, Forge), :func:`sweep` asks ``/internal/progress`` about each
  abandoned task: ``active`` → ``POST /sdapi/v1/interrupt`` (only then, and at
  most every ``RESEND`` s); ``queued`` → kept, to be interrupted when it begins; ``completed``,
  or unknown for ``FORGET_AFTER`` s (it never arrived, or the WebUI restarted), or "active" on
  an idle WebUI (a request that raised) → struck out. The sweep runs before each job, at every
  poll while our own request waits its turn, and with each health check.
* without (``by_order`` entries), the next job's :class:`~jobqueue.connectors.a1111.ownership.JobOrder`
  interrupts as many jobs as there are such entries as they begin ahead of its own; a WebUI
  found idle before a job is posted has run them all (:func:`forget_by_order`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

from jobqueue.connectors.a1111.client import WebUIClient
from jobqueue.connectors.orphans import OrphanBook

log = logging.getLogger(__name__)

#: Seconds between two interrupts of the same abandoned task.
RESEND = 2.0
#: Seconds after which a task the WebUI does not know is forgotten.
FORGET_AFTER = 10.0


def _mine(book: OrphanBook, client: WebUIClient, following: Collection[str], by_order: bool) -> dict[str, Any]:
    return {task_id: facts for task_id, facts in book.entries().items()
            if task_id not in following and facts.get("url") == client.base_url
            and bool(facts.get("by_order")) == by_order}


def sweep(client: WebUIClient, book: OrphanBook, following: Collection[str], timeout: float) -> int:
    """One pass over the abandoned tasks of this WebUI (see the module docstring); returns how
    many are still in the book."""
    left = _mine(book, client, following, by_order=False)
    if not left or not client.task_ids:
        return len(left)
    for task_id, facts in left.items():
        answer = client.task(task_id, timeout)
        if answer is None:
            return len(left)
        now = time.time()
        if answer.get("active"):
            if not _busy(client, timeout):
                book.discard(task_id)  # the request raised: the task id stays "current" on an idle WebUI
            elif now - float(facts.get("interrupted_at") or 0) >= RESEND:
                log.warning("a1111: interrupting abandoned task %s on %s", task_id, client.base_url)
                client.interrupt(timeout)
                book.add(task_id, interrupted_at=now)
        elif answer.get("completed") or (not answer.get("queued")
                                         and now - float(facts.get("at") or now) > FORGET_AFTER):
            log.info("a1111: abandoned task %s is gone from %s", task_id, client.base_url)
            book.discard(task_id)
    return len(_mine(book, client, following, by_order=False))


def _busy(client: WebUIClient, timeout: float) -> bool:
    response = client.request("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=timeout)
    if response.status_code != 200:
        return True
    return bool((response.json().get("state") or {}).get("job_count", 0))


def queued_by_order(book: OrphanBook, client: WebUIClient, following: Collection[str]) -> int:
    """How many abandoned requests without task ids may still be queued on this WebUI."""
    return len(_mine(book, client, following, by_order=True))


def forget_by_order(book: OrphanBook, client: WebUIClient, following: Collection[str], count: int | None = None) -> None:
    """Strike out ``count`` (None: all) of the oldest abandoned requests without task ids."""
    entries = sorted(_mine(book, client, following, by_order=True).items(), key=lambda kv: float(kv[1].get("at") or 0))
    for task_id, _ in entries[: len(entries) if count is None else count]:
        book.discard(task_id)
