"""The one Celery task that runs every job: thin glue between Celery and a connector.

It finds the job's connector in the worker runtime, runs it with a progress reporter that
both writes the ``PROGRESS`` state to the result backend (for ``JobHandle.progress()``) and
sends a ``task-progress`` event (for the monitor: ``update_state`` alone sends none), and
maps connector errors onto Celery outcomes: retry elsewhere, fail, or cancelled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery import states as celery_states
from celery.exceptions import Ignore

from jobqueue.connectors import Job
from jobqueue.errors import ConnectorError, JobCancelled
from jobqueue.shared import job_record as facts
from jobqueue.shared.masking import mask
from jobqueue.shared.names import RUN_JOB_TASK, TASK_PROGRESS, TASK_REVOKED, job_meta_from_kwargs
from jobqueue.shared.previews import publisher_for
from jobqueue.shared.records import attempts_key, facts_key, result_client
from jobqueue.shared.summary import summarize_payload
from jobqueue.states import PROGRESS
from jobqueue.transport.internals import result_key
from jobqueue.transport.results import RedisBackend
from jobqueue.worker.handback import hand_back_if_models_vanished
from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.lease import given_up
from jobqueue.worker.masked import install_log_filter
from jobqueue.worker.progress import ProgressTracker
from jobqueue.worker.progress_state import ProgressState
from jobqueue.worker.retrying import plan_retry
from jobqueue.worker.runtime import WorkerRuntime
from jobqueue.worker.workflow import run_step

log = logging.getLogger(__name__)

#: Longest ``task-succeeded`` result repr (Celery's default 1024 cut image lists short); a
#: longer or deeper result reaches the monitor whole through the result backend.
RESULT_REPR_MAX = 20000

#: Minimum seconds between two progress publications that only move the percent.
PROGRESS_MIN_INTERVAL = 0.1
#: At most one progress write (backend state + event) per this many seconds; the reports in
#: between are coalesced into the latest, which is written when the window ends.
PROGRESS_WINDOW = 0.05
#: Progress events are lossy anyway: a broker out of reach must not hold the job for long.
PROGRESS_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def _runtime(app: Any, hostname: str | None) -> WorkerRuntime:
    """The worker's runtime; built on first use where no bootstep ran (eager/test workers)."""
    if app.runtime is None:
        identity = WorkerIdentity.build(app.settings, (), hostname)
        app.runtime = WorkerRuntime(app.settings, identity)
        app.runtime.start()
        app.runtime.check_health()
    runtime: WorkerRuntime = app.runtime
    return runtime


def _mark_cancelled(task: Any, reason: str) -> None:
    # An exception, not a dict: Celery reads REVOKED results back as exceptions.
    task.update_state(state=celery_states.REVOKED, meta=JobCancelled(reason))
    task.send_event(TASK_REVOKED, terminated=True, signum=None, expired=False)


def _expires(app: Any) -> int:
    return int(app.conf.result_expires or 86400)


def _job_meta(task: Any, service: str, payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The job's metadata as the client sent it (options, service, payload summary), secrets
    masked: it is what monitors read (:mod:`jobqueue.shared.masking`)."""
    secret_keys = task.app.settings.secret_keys_pattern
    meta = {**options, "service": service}
    summary = summarize_payload(service, payload, secret_keys)
    if summary is not None:
        meta.setdefault("payload_summary", summary)
    masked: dict[str, Any] = mask(meta, secret_keys)
    return masked


#: Facts a new attempt clears (they belonged to the previous one).
_ENDED_FACTS = ("finished_at", "runtime", "retried_at")


def _queue_start(pipe: Any, task: Any, meta: dict[str, Any], runtime: WorkerRuntime, started: float) -> None:
    """Queue the start of an attempt on ``pipe``: read the stored state, count the start, read
    the facts so far and write the new attempt's facts (see :func:`_begin_attempt`)."""
    app, request = task.app, task.request
    received = _received_times(app).pop(request.id, None) or started
    start = {
        "submitted_at": meta.get("submitted_at"), "received_at": min(received, started),
        "started_at": started, "attempt": request.retries or 0, "worker": runtime.identity.node_name,
        "machine_id": runtime.identity.machine_id, "meta": meta, "name": task.name,
    }
    pipe.get(result_key(app, request.id))
    pipe.incr(attempts_key(request.id))
    pipe.expire(attempts_key(request.id), _expires(app))
    pipe.hgetall(facts_key(request.id))
    facts.queue_write(pipe, request.id, start, expires=_expires(app), remove=_ENDED_FACTS)


@dataclass
class _EarlyStart:
    """The start of an attempt queued to ride with its STARTED state (see :func:`_on_task_prerun`)."""

    started: float
    #: The replies to the start's commands, once the STARTED state was stored with them.
    replies: list[Any] | None = None
    #: Set when the body started the attempt itself: the rider, if it still runs, does nothing.
    skip: bool = False


def _started_early(app: Any) -> dict[str, _EarlyStart]:
    """Starts queued to ride with the STARTED state, by job id, until the body takes them."""
    early: dict[str, _EarlyStart] | None = getattr(app, "_jobqueue_started_early", None)
    if early is None:
        early = app._jobqueue_started_early = {}
    return early


def _on_task_prerun(sender: Any = None, task_id: str | None = None, kwargs: dict[str, Any] | None = None,
                    **_: Any) -> None:
    """Before Celery stores a job's STARTED state: queue the start of the attempt to ride in
    the same round trip (one round trip less per job). A workflow step, whose payload is only
    known in the body, and a worker without our Redis backend start in the body instead; so
    does any task whose STARTED state is not stored after all (eager, ignored results): the
    body then finds no replies and starts the attempt itself."""
    app = getattr(sender, "app", None)
    backend = getattr(sender, "backend", None)
    if (app is None or getattr(sender, "name", None) != RUN_JOB_TASK or not isinstance(task_id, str)
            or not isinstance(backend, RedisBackend) or not sender.track_started
            or not isinstance(getattr(app, "runtime", None), WorkerRuntime) or not isinstance(kwargs, dict)):
        return
    options = kwargs.get("options") or {}
    service, payload = kwargs.get("service"), kwargs.get("payload")
    if options.get("workflow_id") or not isinstance(service, str) or not isinstance(payload, dict):
        return
    entry = _started_early(app)[task_id] = _EarlyStart(time.time())
    meta = _job_meta(sender, service, payload, options)

    def ride(pipe: Any) -> None:
        if not entry.skip:
            _queue_start(pipe, sender, meta, app.runtime, entry.started)

    def took(replies: list[Any]) -> None:
        if not entry.skip:
            entry.replies = replies

    backend.ride_with_next_state(task_id, ride, on_replies=took)


def _begin_attempt(task: Any, meta: dict[str, Any], runtime: WorkerRuntime,
                   started: float) -> tuple[bool, int, float]:
    """Start an attempt: return (was the job cancelled before it started, which attempt
    starts now — 0 for the first, when it started) and record the start in the job's facts
    (:mod:`jobqueue.shared.job_record`).

    The attempt number counts every start: Celery's ``retries`` counts only explicit
    retries, and a message redelivered after its worker died starts again with the same
    count. On a Redis result backend all of it is one round trip: the stored state, an INCR
    of the start count, the facts so far and, written in the same transaction on the bet
    that this is an ordinary start (attempt = ``retries``, no earlier attempt left
    unfinished, not cancelled), the new attempt's facts. When the bet is off a second write
    puts it right: the attempt number and the earlier attempt in ``history``, or, for a
    cancelled job, the facts as they were. Elsewhere the state is read through Celery and
    ``retries`` counts.
    """
    app, request = task.app, task.request
    retries = request.retries or 0
    client = result_client(app)
    if client is None:
        return app.AsyncResult(request.id).state == celery_states.REVOKED, retries, started
    early = _started_early(app).pop(request.id, None)
    if early is not None and early.replies is not None:  # read and written with STARTED
        started, replies = early.started, early.replies
    else:
        if early is not None:
            early.skip = True  # STARTED was not stored (yet): never start twice
        try:
            pipe = client.pipeline()
            _queue_start(pipe, task, meta, runtime, started)
            replies = pipe.execute()
        except Exception:  # the backend is down: the job can still run; Celery will say so
            log.warning("could not read the state of job %s", request.id, exc_info=True)
            return False, retries, started
    if any(isinstance(reply, Exception) for reply in replies):
        log.warning("could not record the start of job %s: %s", request.id, replies)
        return False, retries, started
    raw, count, _, known_raw, *_ = replies
    state = app.backend.decode_result(raw).get("status") if raw else None
    known = facts.decode(known_raw)
    # A cancel made while no worker was online reached no worker's revoked list, and Celery
    # stored STARTED over its REVOKED record before this body ran: the fact still says so.
    if state == celery_states.REVOKED or "cancelled_at" in known:
        # The job never runs: its facts as they were, plus what a discarded message records.
        facts.replace(client, request.id, known_raw, {
            "submitted_at": meta.get("submitted_at"), "meta": meta, "name": task.name, "finished_at": started,
        }, expires=_expires(app), only_new=("finished_at",))
        return True, retries, started
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
        facts.write(client, request.id, fixes, expires=_expires(app))
    return False, attempt, started


def _send_progress_event(app: Any, runtime: WorkerRuntime, request: Any, meta: dict[str, Any]) -> None:
    """Send ``task-progress`` through the worker's own event dispatcher when there is one:
    there it joins the job's lifecycle events (Celery buffers the ``task`` group and the
    event loop publishes it, in order with them), so the job never waits for the broker.
    Elsewhere, a dispatcher of its own, as ``Task.send_event`` does."""
    dispatcher = runtime.worker_events() if runtime.worker_events is not None else None
    if dispatcher is not None and dispatcher.enabled and (not dispatcher.groups or "task" in dispatcher.groups):
        dispatcher.send(TASK_PROGRESS, uuid=request.id, **meta)
        return
    with app.events.default_dispatcher(hostname=request.hostname) as own:
        own.send(TASK_PROGRESS, uuid=request.id, retry=True, retry_policy=PROGRESS_RETRY_POLICY, **meta)


def _record_end(task: Any, started: float, *, retried: bool = False) -> None:
    """Record the end of the running attempt (``retried``: it goes back to the queue).

    On our Redis backend the facts ride in the transaction that stores the state Celery
    writes next (the result, the failure, the retry): one round trip, and the two agree."""
    client = result_client(task.app)
    if client is None:
        return
    now = time.time()
    fields = {"retried_at": now} if retried else {"finished_at": now, "runtime": round(now - started, 6)}
    job_id, expires = task.request.id, _expires(task.app)
    backend = task.backend
    if isinstance(backend, RedisBackend):
        backend.ride_with_next_state(job_id, lambda pipe: facts.queue_write(pipe, job_id, fields, expires=expires))
        return
    facts.write(client, job_id, fields, expires=expires)


def _on_task_postrun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    """What rode with a state that was never stored (``Ignore``, a duplicate) goes now; a
    start the body never took is forgotten."""
    app = getattr(sender, "app", None)
    if app is not None and isinstance(task_id, str):
        early = _started_early(app).pop(task_id, None)
        if early is not None:
            early.skip = True
    backend = getattr(sender, "backend", None)
    if isinstance(backend, RedisBackend) and isinstance(task_id, str):
        backend.flush_riders(task_id)


def _received_times(app: Any) -> dict[str, float]:
    """When this worker received each message (``task_received`` signal), by job id."""
    times: dict[str, float] | None = getattr(app, "_jobqueue_received", None)
    if times is None:
        times = {}
        app._jobqueue_received = times
    return times


def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    name = getattr(request, "task_name", None) or getattr(request, "name", None)
    if app is None or request is None or name != RUN_JOB_TASK:
        return
    times = _received_times(app)
    if len(times) > 1000:  # messages received and never run (revoked): forget the oldest
        for key in list(times)[:500]:
            times.pop(key, None)
    times[request.id] = time.time()


def _on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
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
                    expires=_expires(app), only_new=("finished_at", "submitted_at", "meta", "name"))


def run_job(task: Any, service: str, payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Body of the ``jobqueue.run_job`` task (``task`` is the bound Celery task)."""
    request = task.request
    app = task.app
    started = time.time()
    meta = _job_meta(task, service, payload, options)
    runtime = _runtime(app, request.hostname)
    revoked, attempt, started = _begin_attempt(task, meta, runtime, started)
    if revoked:
        # Cancelled while queued, before any worker knew: never run it. Celery stored
        # STARTED over the client's REVOKED record just before this body: put the client's
        # record back as it was (no worker in it: the job never ran anywhere).
        app.backend.store_result(request.id, JobCancelled("cancelled by client"), celery_states.REVOKED)
        task.send_event(TASK_REVOKED, terminated=False, signum=None, expired=False)
        raise Ignore()
    connector = runtime.connector(service)
    settings = app.settings
    timeout = options.get("timeout") or settings.job_timeout
    job = Job(
        id=request.id,
        service=service,
        payload=payload,
        options={**options, "timeout": timeout},
        attempt=attempt,
        deadline=time.monotonic() + float(timeout),
    )

    # Captured here: Celery's task request and backend are per thread, and a report held by
    # the progress window is written from a timer thread.
    progress_state = ProgressState(task.backend, PROGRESS)

    def publish(progress: dict[str, Any]) -> None:
        meta = {**progress, "service": service, "attempt": job.attempt}
        if runtime.is_given_up(job.id):
            return  # the job belongs to another worker now
        try:
            progress_state.store(request.id, meta, request)  # = update_state, in one round trip
            _send_progress_event(app, runtime, request, meta)
        except Exception as exc:  # broker or backend out of reach: progress is best effort
            log.warning("job %s: progress not published: %s", job.id, exc)

    # The start counts as a publication: a job that succeeds within the first window writes
    # no progress at all (its result, stored next, says more), a longer one its first report
    # at most one window late.
    tracker = ProgressTracker(publish, min_interval=PROGRESS_MIN_INTERVAL, window=PROGRESS_WINDOW, hold_start=True,
                              timer=runtime.timers)
    previews = job.previews = publisher_for(app, job.id, lambda seq: tracker.annotate(preview=seq))

    def settle(*, succeeded: bool = False) -> None:
        """The job's progress ends: its last preview and report are written (a held report
        only when the job did not succeed), nothing after (called before the job's final
        state is stored)."""
        if previews is not None:
            previews.close()
        tracker.close(superseded=succeeded)

    runtime.job_started(job, connector)
    error: BaseException | None = None
    try:
        output = connector.run(job, tracker.report)
    except JobCancelled as exc:
        error = exc
        settle()
        if runtime.is_given_up(job.id):  # lease lost: the job belongs to another worker now
            raise given_up(job.id) from exc
        _record_end(task, started)
        _mark_cancelled(task, str(exc))
        raise Ignore() from exc
    except ConnectorError as exc:
        error = exc
        settle()
        if runtime.is_given_up(job.id):
            raise given_up(job.id) from exc
        hand_back_if_models_vanished(task, runtime, options, exc)  # raises Retry when it applies
        plan = plan_retry(app, job.id, exc, retries=request.retries or 0, max_retries=settings.max_retries,
                          started_at=time.time() - (time.monotonic() - job.started), timeout=float(timeout))
        if plan.retry:
            log.warning("job %s: %s; retrying in %g s (attempt %d; %s)", job.id, exc, plan.countdown,
                        job.attempt + 1, plan.reason)
            _record_end(task, started, retried=True)
            # The plan decided; Celery's own limit only has to let this one retry through.
            raise task.retry(exc=exc, countdown=plan.countdown, max_retries=(request.retries or 0) + 1) from exc
        _record_end(task, started)
        raise
    except BaseException as exc:
        error = exc
        settle()
        _record_end(task, started)
        raise
    finally:
        runtime.job_finished(job, connector, error)
    try:
        if runtime.is_given_up(job.id):
            raise given_up(job.id)
        result = {
            "job_id": job.id,
            "service": service,
            "worker": runtime.identity.node_name,
            "machine_id": runtime.identity.machine_id,
            "gpu": runtime.identity.gpu,
            "attempt": job.attempt,
            "duration": round(time.monotonic() - job.started, 3),
        }
        result.update(output)
        _record_end(task, started)
    except BaseException:
        settle()
        raise
    settle(succeeded=True)
    return result


def register_tasks(app: Any) -> None:
    """Register the job task on ``app``."""

    signals.task_received.connect(_on_task_received, weak=False, dispatch_uid="jobqueue-facts-received")
    signals.task_revoked.connect(_on_task_revoked, weak=False, dispatch_uid="jobqueue-facts-revoked")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="jobqueue-facts-postrun")
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="jobqueue-facts-prerun")
    install_log_filter(app.settings.secret_keys_pattern)

    # The strategy hands back, before it starts, a job whose requirements this worker lacks.
    @app.task(bind=True, name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, shared=False,  # type: ignore[untyped-decorator]
              Strategy="jobqueue.worker.handback:requirements_strategy", resultrepr_maxsize=RESULT_REPR_MAX,
              Request="jobqueue.worker.masked:MaskingRequest")
    def _run_job(
        self: Any, service: str, payload: dict[str, Any], options: dict[str, Any] | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        options = options or {}
        if options.get("workflow_id"):
            # A workflow step: $prev placeholders from ``previous``, later steps end with it.
            return run_step(self, run_job, service, payload, options, previous)
        return run_job(self, service, payload, options)
