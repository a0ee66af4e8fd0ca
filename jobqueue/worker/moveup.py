"""Out of GPU memory moves the job up to a larger card.

A job that runs out of memory (:class:`~jobqueue.errors.OutOfMemory`: ComfyUI's
``torch.OutOfMemoryError``, the WebUI's 500 "CUDA out of memory") would fit on a larger card.
:func:`move_up_if_out_of_memory` sends it back to its queue with ``requires.vram_gb`` raised to
the next VRAM tier above this worker's card (:data:`~jobqueue.shared.routing.VRAM_STEPS`), so
only a larger worker takes it, without using up a retry; a larger worker that runs out too
moves it up again, once per tier. The job then reads ``queued`` with the out-of-memory error as
its reason and, while no online worker has that much VRAM, a ``waiting_for`` that says so.

It waits at most ``JOBQUEUE_OOM_WAIT`` seconds: every worker sweeps the moved-up jobs
(:class:`MoveUpSweeper`, the ``moved-up`` concern) and fails one still waiting after its bound
with a clear error naming the VRAM tried. A job that ran out of memory on a card of the top
tier, on a worker that reports no VRAM, or pinned to one queue fails at once.

Bookkeeping: the job's options carry ``moved_up`` (the VRAM tried, the tier asked for, when it
gives up); a sorted set holds every waiting job by that time
(:func:`jobqueue.shared.records.moved_up_key`). A larger worker that starts the job takes it
out (:func:`claim`); a copy of the message started after the sweep failed the job is not run.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import bootsteps
from celery.exceptions import Retry

from jobqueue.errors import OutOfMemory
from jobqueue.shared import queued
from jobqueue.shared.names import RUN_JOB_TASK, TASK_FAILED
from jobqueue.shared.records import moved_up_info_key, moved_up_key, requires_key, result_client
from jobqueue.shared.requirements import Requirements, capabilities_from_details, route_queue
from jobqueue.shared.routing import VRAM_STEPS
from jobqueue.transport.internals import store_failure
from jobqueue.worker.loop import IntervalLoop

log = logging.getLogger(__name__)

#: Most waiting jobs one sweep looks at.
SWEEP_BATCH = 100


def next_tier(vram_gb: int) -> int | None:
    """The smallest VRAM tier strictly above ``vram_gb`` (None beyond the top one)."""
    return next((step for step in VRAM_STEPS if step > vram_gb), None)


def tried_text(tried: list[Any]) -> str:
    """``8 GiB`` / ``8, 10 GiB``: the VRAM of every card the job ran out of memory on."""
    return ", ".join(f"{v:g}" for v in sorted(set(float(t) for t in tried))) + " GiB"


def gave_up(moved: dict[str, Any], waited: float) -> OutOfMemory:
    """The error of a moved-up job no larger card took within ``waited`` seconds."""
    tried = list(moved.get("vram_tried") or [])
    return OutOfMemory(
        f"out of GPU memory with {tried_text(tried)} of VRAM (last on {moved.get('worker')}); no worker with "
        f"{moved.get('vram_gb'):g} GiB or more took the job within {waited:g} s (JOBQUEUE_OOM_WAIT)",
        {"vram_tried": tried, "vram_gb": moved.get("vram_gb"), "waited": waited, "worker": moved.get("worker")})


def move_up_if_out_of_memory(task: Any, runtime: Any, options: dict[str, Any],
                             error: BaseException) -> OutOfMemory | None:
    """After ``error`` ended an attempt: for anything but :class:`OutOfMemory`, None. Else send
    the job back to its queue with its VRAM requirement raised (raises Celery's ``Retry``), or
    return the clearer error it fails with when it cannot move up."""
    if not isinstance(error, OutOfMemory):
        return None
    request = task.request
    service = str((request.kwargs or {}).get("service") or "")
    connector = runtime.connectors.get(service)
    node = runtime.identity.node_name
    vram = capabilities_from_details(node, service, connector.details if connector else None).vram_gb
    earlier = options.get("moved_up")
    moved: dict[str, Any] = earlier if isinstance(earlier, dict) else {}
    tried = [*(moved.get("vram_tried") or []), *([vram] if vram else [])]
    req = Requirements.from_dict(options.get("requires"))
    tier = next_tier(vram) if vram else None
    pinned = options.get("queue") not in (None, route_queue(service, req))
    if tier is None or pinned:
        why = ("this worker reports no GPU memory" if not vram else f"no VRAM tier above {vram} GiB" if tier is None
               else f"the job is pinned to queue {options.get('queue')}")
        with_vram = f" -- out of memory with {tried_text(tried)} of VRAM" if tried else ""
        return OutOfMemory(f"{error.message}{with_vram}; not moved up: {why}", {**error.details, "vram_tried": tried})
    raised = Requirements(req.models, float(max(tier, req.vram_gb or 0)), req.tags)
    queue = route_queue(service, raised)
    wait = float(task.app.settings.oom_wait)
    moved = {"vram_tried": tried, "vram_gb": raised.vram_gb, "worker": node, "give_up_at": time.time() + wait,
             "wait": wait, "service": service, "queue": queue}
    new_options = {**options, "requires": raised.as_dict(), "queue": queue, "moved_up": moved}
    _remember(task.app, request.id, service, raised, moved)
    message = (f"out of GPU memory on {node} ({vram} GiB): moved up to a card with {raised.vram_gb:g} GiB or more "
               f"(tried {tried_text(tried)})")
    log.warning("job %s: %s", request.id, message)
    again = task.signature_from_request(request, None, {**(request.kwargs or {}), "options": new_options},
                                        queue=queue, countdown=0, retries=request.retries or 0)
    queued.back_in_queue(task, service)
    again.apply_async()
    raise Retry(message, exc=OutOfMemory(message, {"requires": raised.as_dict(), "vram_tried": tried,
                                                   "worker": node, "cause": error.message[:500]}), when=0, sig=again)


def _remember(app: Any, job_id: str, service: str, req: Requirements, moved: dict[str, Any]) -> None:
    """The raised requirement where clients read why a job waits (the submit record,
    :mod:`jobqueue.client.waiting`), and the job among the moved-up ones the sweep watches."""
    client = result_client(app)
    if client is None:
        return
    ttl = int(app.conf.result_expires or 86400)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.set(requires_key(job_id), json.dumps({"service": service, "requires": req.as_dict()}), ex=ttl)
            pipe.zadd(moved_up_key(), {job_id: moved["give_up_at"]})
            pipe.hset(moved_up_info_key(), job_id, json.dumps(moved))
            pipe.execute()
    except Exception:  # the job moves up anyway; only its bound is not watched
        log.warning("job %s: could not record its move up", job_id, exc_info=True)


def claim(app: Any, job_id: str, options: dict[str, Any]) -> OutOfMemory | None:
    """A worker starts a moved-up job: take it out of the sweep's watch. Returns the error it
    already failed with when the sweep gave up on it first (this copy must not run), else None."""
    moved = options.get("moved_up")
    if not isinstance(moved, dict):  # the common case, decided before the backend is looked up
        return None
    client = result_client(app)
    if client is None:
        return None
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(moved_up_key(), job_id)
            pipe.hdel(moved_up_info_key(), job_id)
            removed, _ = pipe.execute()
    except Exception:
        log.warning("job %s: could not read its move-up record", job_id, exc_info=True)
        return None
    if removed or time.time() < float(moved.get("give_up_at") or 0):
        return None
    return gave_up(moved, float(moved.get("wait") or 0))


def sweep(app: Any, hostname: str | None, send_failed: Any, now: float | None = None) -> list[str]:
    """Fail every moved-up job whose bound passed and that no worker took (one sweeper wins
    each: the one whose ZREM removed it). Returns the ids of the jobs failed."""
    client = result_client(app)
    if client is None:
        return []
    due = client.zrangebyscore(moved_up_key(), "-inf", now if now is not None else time.time(), 0, SWEEP_BATCH)
    failed = []
    for raw in due:
        job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(moved_up_key(), job_id)
            pipe.hget(moved_up_info_key(), job_id)
            pipe.hdel(moved_up_info_key(), job_id)
            removed, info, _ = pipe.execute()
        if not removed or not info:
            continue  # another worker's sweep, or a start, took it
        if app.backend.get_state(job_id) != "RETRY":
            continue  # running or ended elsewhere: not waiting any more
        moved = json.loads(info)
        exc = gave_up(moved, float(moved.get("wait") or 0))
        log.error("job %s: %s", job_id, exc.message)
        store_failure(app, job_id, exc, task=RUN_JOB_TASK, hostname=hostname, queue=str(moved.get("queue")))
        queued.forget(app, [str(moved.get("service"))], [job_id])
        send_failed(job_id, exc)
        failed.append(job_id)
    return failed


class MoveUpSweeper:
    """The worker's loop that fails moved-up jobs whose wait is over (see :func:`sweep`)."""

    def __init__(self, app: Any, hostname: str | None, *, interval: float) -> None:
        self.app, self.hostname = app, hostname
        self.loop = IntervalLoop(self.tick, interval=interval, name="jobqueue-moved-up")

    def tick(self) -> list[str]:
        return sweep(self.app, self.hostname, self._send_failed)

    def _send_failed(self, job_id: str, exc: OutOfMemory) -> None:
        with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
            dispatcher.send(TASK_FAILED, uuid=job_id, exception=repr(exc), traceback="")

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()


class MoveUpStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Runs the worker's :class:`MoveUpSweeper` (every ``JOBQUEUE_HEALTH_INTERVAL``)."""

    label = "jobqueue moved-up sweep"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: MoveUpSweeper | None = None

    def create(self, worker: Any) -> None:
        settings = worker.app.settings
        self.sweeper = MoveUpSweeper(worker.app, worker.hostname,
                                     interval=min(settings.health_interval, settings.oom_wait / 2))

    def start(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.start()

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
