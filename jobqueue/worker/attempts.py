"""A job's attempts in its record (:mod:`jobqueue.shared.job_record`): each start and each end.

An attempt starts in one round trip on a Redis result backend: the stored state, an INCR of
the job's start count, the facts so far and, written in the same transaction on the bet that
this is an ordinary start, the new attempt's facts (:func:`begin_attempt`). Where it can, that
round trip is not even one of its own: :func:`queue_start_with_started` (the ``task_prerun``
concern) queues it to ride with the ``STARTED`` state Celery stores just before the body
(:meth:`~jobqueue.transport.results.RedisBackend.ride_with_next_state`), and the body takes
its replies from :func:`take_early_start`. An attempt's end rides with the state stored next
(:func:`record_end`).

The signal handlers at the end (received, prerun, postrun, revoked) are installed by
:mod:`jobqueue.worker.concerns`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import states as celery_states

from jobqueue.shared import job_record as facts
from jobqueue.shared import queued
from jobqueue.shared.masking import DEFAULT_PATTERN, mask
from jobqueue.shared.names import RUN_JOB_TASK, job_meta_from_kwargs
from jobqueue.shared.records import attempts_key, facts_key, result_client
from jobqueue.shared.summary import summarize_payload
from jobqueue.transport.internals import result_key
from jobqueue.transport.results import RedisBackend
from jobqueue.worker.event_times import note_end, take_received, take_started
from jobqueue.worker.fence import wait_for_first_attempt
from jobqueue.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

#: Facts a new attempt clears (they belonged to the previous one).
_ENDED_FACTS = ("finished_at", "runtime", "retried_at")
#: Facts of the earlier attempts a start reads (:func:`_settle_start`, the fence); the job's
#: metadata and submit facts, the bulk of the hash, are left unparsed.
_START_FACTS = frozenset({"started_at", "finished_at", "retried_at", "cancelled_at", "attempt", "worker",
                          "received_at", "history"})
#: How the record of a ``STARTED`` state begins as our result backend writes it (Celery's
#: record, its status first, JSON with Celery's separators; see :func:`stored_state`).
_STARTED_RECORD = b'{"status": "%s"' % celery_states.STARTED.encode()


def job_meta(service: str, payload: dict[str, Any], options: dict[str, Any],
             secret_keys: str = DEFAULT_PATTERN) -> dict[str, Any]:
    """The job's metadata as the client sent it (options, service, payload summary), secrets
    masked: it is what monitors read (:mod:`jobqueue.shared.masking`)."""
    meta = {**options, "service": service}
    summary = summarize_payload(service, payload, secret_keys)
    if summary is not None:
        meta.setdefault("payload_summary", summary)
    masked: dict[str, Any] = mask(meta, secret_keys)
    return masked


def stored_state(app: Any, raw: Any) -> str | None:
    """The state of a result record as read (None: no record). The ``STARTED`` record this
    worker has just written is recognised by how it begins, without parsing it: it holds
    the job's arguments (a ComfyUI workflow can be hundreds of kB); any other is parsed."""
    if not raw:
        return None
    if isinstance(raw, bytes) and raw.startswith(_STARTED_RECORD):
        return str(celery_states.STARTED)
    state: str | None = app.backend.decode_result(raw).get("status")
    return state


@dataclass(frozen=True)
class Attempt:
    """How an attempt began: cancelled before it started, which attempt (0: the first), when,
    and whether the job had already ended (a stray copy of its message: never run again)."""

    cancelled: bool
    number: int
    started: float
    ended: bool = False


def queue_start(pipe: Any, task: Any, meta: dict[str, Any], runtime: WorkerRuntime, started: float) -> None:
    """Queue the start of an attempt on ``pipe``: read the stored state, count the start, read
    the facts so far, write the new attempt's facts (see :func:`begin_attempt`) and take the
    job out of its service's queued-jobs index (:mod:`jobqueue.shared.queued`)."""
    app, request = task.app, task.request
    signalled = _received_times(app).pop(request.id, None)
    received = take_received(app, request.id) or signalled or started
    start = {
        "submitted_at": meta.get("submitted_at"), "received_at": min(received, started),
        "started_at": started, "attempt": request.retries or 0, "worker": runtime.identity.node_name,
        "machine_id": runtime.identity.machine_id, "meta": meta, "name": task.name,
    }
    pipe.get(result_key(app, request.id))
    pipe.incr(attempts_key(request.id))
    pipe.expire(attempts_key(request.id), queued.expires_of(app))
    pipe.hgetall(facts_key(request.id))
    facts.queue_write(pipe, request.id, start, expires=queued.expires_of(app), remove=_ENDED_FACTS)
    queued.queue_remove(pipe, meta["service"], request.id, meta.get("tenant"))  # no longer queued


# -- the start that rides with STARTED --------------------------------------------------------


@dataclass
class EarlyStart:
    """The start of an attempt queued to ride with its STARTED state."""

    started: float
    #: The job's metadata (computed once per attempt, here rather than in the body).
    meta: dict[str, Any]
    #: The replies to the start's commands, once the STARTED state was stored with them.
    replies: list[Any] | None = None
    #: Set when the body started the attempt itself: the rider, if it still runs, does nothing.
    skip: bool = False


def early_starts(app: Any) -> dict[str, EarlyStart]:
    """Starts queued to ride with the STARTED state, by job id, until the body takes them."""
    early: dict[str, EarlyStart] | None = getattr(app, "_jobqueue_started_early", None)
    if early is None:
        early = app._jobqueue_started_early = {}
    return early


def queue_start_with_started(task: Any, task_id: str, service: str, payload: dict[str, Any],
                             options: dict[str, Any]) -> None:
    """Queue the start of ``task_id``'s attempt to ride in the round trip that stores its
    STARTED state (``task``'s backend is a :class:`RedisBackend` and the worker has a runtime)."""
    app, backend = task.app, task.backend
    entry = early_starts(app)[task_id] = EarlyStart(take_started(app, task_id) or time.time(), job_meta(service, payload, options, app.settings.secret_keys_pattern))

    def ride(pipe: Any) -> None:
        if not entry.skip:
            queue_start(pipe, task, entry.meta, app.runtime, entry.started)

    def took(replies: list[Any]) -> None:
        if not entry.skip:
            entry.replies = replies

    backend.ride_with_next_state(task_id, ride, on_replies=took)


def take_early_start(app: Any, job_id: str) -> EarlyStart | None:
    """The start queued for ``job_id`` by :func:`queue_start_with_started`, taken by the body
    (its ``replies`` are None when STARTED was not stored with it: the rider then never runs)."""
    early = early_starts(app).pop(job_id, None)
    if early is not None and early.replies is None:
        early.skip = True  # STARTED was not stored (yet): never start twice
    return early


def forget_early_start(app: Any, job_id: str) -> None:
    """A start the body never took is forgotten (the task is over)."""
    early = early_starts(app).pop(job_id, None)
    if early is not None:
        early.skip = True


# -- an attempt begins -------------------------------------------------------------------------


def begin_attempt(task: Any, meta: dict[str, Any], runtime: WorkerRuntime, started: float,
                  early: EarlyStart | None = None) -> Attempt:
    """Start an attempt and record the start in the job's facts.

    The attempt number counts every start: Celery's ``retries`` counts only explicit retries,
    and a message redelivered after its worker died starts again with the same count. The
    facts are written on the bet that this is an ordinary start (attempt = ``retries``, no
    earlier attempt left unfinished, not cancelled); when the bet is off a second write puts
    it right (:func:`_settle_start`). Without a Redis result backend the state is read through
    Celery and ``retries`` counts.
    """
    app, request = task.app, task.request
    retries = request.retries or 0
    client = result_client(app)
    if client is None:
        return Attempt(app.AsyncResult(request.id).state == celery_states.REVOKED, retries, started)
    if early is not None and early.replies is not None:  # read and written with STARTED
        started, replies = early.started, early.replies
    else:
        try:
            pipe = client.pipeline()
            queue_start(pipe, task, meta, runtime, started)
            replies = pipe.execute()
        except Exception:  # the backend is down: the job can still run; Celery will say so
            log.warning("could not read the state of job %s", request.id, exc_info=True)
            return Attempt(False, retries, started)
    if any(isinstance(reply, Exception) for reply in replies):
        log.warning("could not record the start of job %s: %s", request.id, replies)
        return Attempt(False, retries, started)
    return _settle_start(task, client, meta, replies, started)


def _settle_start(task: Any, client: Any, meta: dict[str, Any], replies: list[Any], started: float) -> Attempt:
    """Put the start right where the bet was off: a cancelled job's facts as they were, or the
    attempt number and the earlier, unfinished attempt in ``history``."""
    app, request = task.app, task.request
    retries = request.retries or 0
    raw, count, _, known_raw, *_ = replies
    state = stored_state(app, raw)
    known = facts.decode(known_raw, _START_FACTS)
    # RabbitMQ: a copy redelivered while a live worker still runs the job waits for it (fence).
    after = wait_for_first_attempt(task, client, known)
    if after is not None:
        state = app.backend.get_state(request.id)
    # A cancel made while no worker was online reached no worker's revoked list, and Celery
    # stored STARTED over its REVOKED record before this body ran: the fact still says so.
    if state == celery_states.REVOKED or "cancelled_at" in known:
        # The job never runs: its facts as they were, plus what a discarded message records.
        facts.replace(client, request.id, known_raw, {
            "submitted_at": meta.get("submitted_at"), "meta": meta, "name": task.name, "finished_at": started,
        }, expires=queued.expires_of(app), only_new=("finished_at",))
        return Attempt(True, retries, started)
    if state == celery_states.SUCCESS:
        # A copy of a job that already succeeded: its ack was lost with a broker that failed
        # over or restarted, and the message came back. It never runs again; its facts as they were.
        ended: dict[str, Any] = {k: after[k] for k in ("finished_at", "runtime") if k in after} if after else {}
        facts.replace(client, request.id, known_raw, ended, expires=queued.expires_of(app))
        log.warning("job %s already succeeded: a redelivered copy of its message is dropped", request.id)
        return Attempt(False, retries, started, ended=True)
    attempt = max(int(count) - 1, retries)
    fixes: dict[str, Any] = {"attempt": attempt} if attempt != retries else {}
    if known.get("started_at") is not None and known.get("finished_at") is None:
        # The previous attempt never ended (its worker died) or was retried: into history.
        history = list(known.get("history") or [])
        history.append({
            "attempt": known.get("attempt"), "worker": known.get("worker"),
            "received_at": known.get("received_at"), "started_at": known.get("started_at"),
            "ended_at": known.get("retried_at"), "how": "retried" if known.get("retried_at") else "lost",
        })
        fixes["history"] = history[-facts.MAX_HISTORY:]
    if fixes:
        facts.write(client, request.id, fixes, expires=queued.expires_of(app))
    return Attempt(False, attempt, started)


# -- an attempt ends ---------------------------------------------------------------------------


def record_end(task: Any, started: float, *, retried: bool = False) -> None:
    """Record the end of the running attempt (``retried``: it goes back to the queue, and into
    its service's queued-jobs index at once).

    On our Redis backend the facts ride in the transaction that stores the state Celery
    writes next (the result, the failure, the retry): one round trip, and the two agree."""
    backend = task.backend
    riding = isinstance(backend, RedisBackend)  # ours: the facts ride with the next state
    client = None if riding else result_client(task.app)
    if not riding and client is None:
        return  # no Redis result backend: no facts are kept
    now = time.time()
    request = task.request
    if retried:  # before the retry re-sends the message: its next start comes after this
        queued.back_in_queue(task, request.kwargs.get("service") if request.kwargs else None)
    fields = {"retried_at": now} if retried else {"finished_at": now, "runtime": round(now - started, 6)}
    job_id, ttl = request.id, queued.expires_of(task.app)
    note_end(task.app, job_id, now, fields.get("runtime"))  # the end event carries the same
    if riding:
        backend.ride_with_next_state(job_id, lambda pipe: facts.queue_write(pipe, job_id, fields, expires=ttl))
        return
    facts.write(client, job_id, fields, expires=ttl)


# -- signal handlers (installed by jobqueue.worker.concerns) -----------------------------------


def _received_times(app: Any) -> dict[str, float]:
    """When this worker received each message (``task_received`` signal), by job id."""
    times: dict[str, float] | None = getattr(app, "_jobqueue_received", None)
    if times is None:
        times = {}
        app._jobqueue_received = times
    return times


def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Note when the message arrived (the attempt's ``received_at``)."""
    app = getattr(sender, "app", None)
    name = getattr(request, "task_name", None) or getattr(request, "name", None)
    if app is None or request is None or name != RUN_JOB_TASK:
        return
    times = _received_times(app)
    if len(times) > 1000:  # messages received and never run (revoked): forget the oldest
        for key in list(times)[:500]:
            times.pop(key, None)
    times[request.id] = time.time()


def on_task_prerun(sender: Any = None, task_id: str | None = None, kwargs: dict[str, Any] | None = None,
                   **_: Any) -> None:
    """Before Celery stores a job's STARTED state: queue the start of the attempt to ride in
    the same round trip (:func:`queue_start_with_started`). A workflow step, whose payload is
    only known in the body, and a worker without our Redis backend start in the body instead;
    so does any task whose STARTED state is not stored after all (eager, ignored results)."""
    app = getattr(sender, "app", None)
    if (app is None or getattr(sender, "name", None) != RUN_JOB_TASK or not isinstance(task_id, str)
            or not isinstance(getattr(sender, "backend", None), RedisBackend) or not sender.track_started
            or not isinstance(getattr(app, "runtime", None), WorkerRuntime) or not isinstance(kwargs, dict)):
        return
    options = kwargs.get("options") or {}
    service, payload = kwargs.get("service"), kwargs.get("payload")
    if options.get("workflow_id") or not isinstance(service, str) or not isinstance(payload, dict):
        return
    queue_start_with_started(sender, task_id, service, payload, options)


def on_task_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """What rode with a state that was never stored (``Ignore``, a duplicate) goes now; a
    start the body never took is forgotten."""
    app = getattr(sender, "app", None)
    if app is not None and isinstance(task_id, str):
        forget_early_start(app, task_id)
    backend = getattr(sender, "backend", None)
    if isinstance(backend, RedisBackend) and isinstance(task_id, str):
        backend.flush_riders(task_id)


def on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A message the worker discards as revoked (cancelled while queued): keep the job's
    submit time and metadata, which the client's REVOKED record does not hold."""
    app = getattr(sender, "app", None)
    client = result_client(app) if app is not None else None
    if client is None or request is None or getattr(sender, "name", None) != RUN_JOB_TASK:
        return
    meta = job_meta_from_kwargs(getattr(request, "kwargsrepr", None))
    job_id = getattr(request, "id", None)
    if isinstance(job_id, str):
        facts.write(client, job_id, {"submitted_at": meta.get("submitted_at"), "meta": meta or None,
                                     "name": RUN_JOB_TASK, "finished_at": time.time()},
                    expires=queued.expires_of(app), only_new=("finished_at", "submitted_at", "meta", "name"))
