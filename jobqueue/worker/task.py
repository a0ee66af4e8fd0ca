"""The one Celery task that runs every job: thin glue between Celery and a connector.

:func:`run_job` reads top-down: the attempt begins (:func:`_begin`, its record in
:mod:`jobqueue.worker.attempts`), the job's connector runs it with a progress reporter
(:class:`JobProgress`: the ``PROGRESS`` state in the result backend for
``JobHandle.progress()`` and a ``task-progress`` event for the monitor, as ``update_state``
alone sends none), and the attempt ends: finished (:func:`_finish`), or failed, retried
elsewhere or cancelled (:func:`_end_failed`, mapping connector errors onto Celery outcomes).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import states as celery_states
from celery.exceptions import Ignore

from jobqueue.connectors import Job
from jobqueue.errors import ConnectorError, JobCancelled
from jobqueue.shared.names import RUN_JOB_TASK, TASK_PROGRESS, TASK_REVOKED
from jobqueue.shared.previews import publisher_for
from jobqueue.states import PROGRESS
from jobqueue.transport.results import store_guarded
from jobqueue.worker.attempts import begin_attempt, job_meta, record_end, take_early_start
from jobqueue.worker.crashes import poisoned_by_crash
from jobqueue.worker.event_times import note_result, take_started
from jobqueue.worker.handback import hand_back_if_models_vanished
from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.lease import given_up
from jobqueue.worker.masked import install_log_filter
from jobqueue.worker.moveup import claim, move_up_if_out_of_memory
from jobqueue.worker.progress import ProgressTracker
from jobqueue.worker.retrying import plan_retry
from jobqueue.worker.runtime import WorkerRuntime
from jobqueue.worker.shutdown import hand_back_on_stop
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
#: A job's preview publisher before its first frame.
_UNMADE: Any = object()
#: Progress events are lossy anyway: a broker out of reach must not hold the job for long.
PROGRESS_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def run_job(task: Any, service: str, payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Body of the ``jobqueue.run_job`` task (``task`` is the bound Celery task): begin the
    attempt, run the job's connector, then finish, fail, retry or end cancelled."""
    runtime = _runtime(task.app, task.request.hostname)
    job, started = _begin(task, runtime, service, payload, options)
    connector = runtime.connector(service)
    progress = JobProgress(task, runtime, job)
    runtime.job_started(job, connector)
    error: BaseException | None = None
    try:
        output = connector.run(job, progress.report)
    except BaseException as exc:
        error = exc
        progress.settle()
        _end_failed(task, runtime, job, options, started, exc)  # raises what Celery is to see
        raise
    finally:
        runtime.job_finished(job, connector, error)
    return _finish(task, runtime, job, started, output, progress)


def _runtime(app: Any, hostname: str | None) -> WorkerRuntime:
    """The worker's runtime; built on first use where no bootstep ran (eager/test workers)."""
    if app.runtime is None:
        identity = WorkerIdentity.build(app.settings, (), hostname)
        app.runtime = WorkerRuntime(app.settings, identity)
        app.runtime.start()
        app.runtime.check_health()
    runtime: WorkerRuntime = app.runtime
    return runtime


def _begin(task: Any, runtime: WorkerRuntime, service: str, payload: dict[str, Any],
           options: dict[str, Any]) -> tuple[Job, float]:
    """Begin the attempt (its start recorded, see :func:`~jobqueue.worker.attempts.begin_attempt`)
    and return the job and when the attempt started; a job cancelled while queued never runs
    (raises ``Ignore``)."""
    app, request = task.app, task.request
    early = take_early_start(app, request.id)
    meta = early.meta if early is not None else job_meta(service, payload, options, app.settings.secret_keys_pattern)
    attempt = begin_attempt(task, meta, runtime, take_started(app, request.id) or time.time(), early)
    if attempt.ended:  # already succeeded (see begin_attempt): acked, nothing stored
        raise Ignore()
    if attempt.cancelled:
        # Cancelled while queued, before any worker knew: never run it. Celery stored
        # STARTED over the client's REVOKED record just before this body: put the client's
        # record back as it was (no worker in it: the job never ran anywhere).
        app.backend.store_result(request.id, JobCancelled("cancelled by client"), celery_states.REVOKED)
        task.send_event(TASK_REVOKED, terminated=False, signum=None, expired=False)
        raise Ignore()
    failed = claim(app, request.id, options)
    if failed is not None:  # moved up after out of memory, and failed while it waited: never run
        app.backend.mark_as_failure(request.id, failed, request=request, call_errbacks=False)
        raise Ignore()
    timeout = options.get("timeout") or app.settings.job_timeout
    job = Job(id=request.id, service=service, payload=payload, options={**options, "timeout": timeout},
              attempt=attempt.number, deadline=time.monotonic() + float(timeout))
    return job, attempt.started


class JobProgress:
    """A running job's progress reports and previews, written in windows.

    Each write is the job's ``PROGRESS`` state (one guarded round trip,
    :func:`~jobqueue.transport.results.store_guarded`) plus a ``task-progress`` event. The
    start counts as a publication: a job that succeeds within the first window writes no
    progress at all (its result, stored next, says more), a longer one its first report at
    most one window late.
    """

    def __init__(self, task: Any, runtime: WorkerRuntime, job: Job) -> None:
        # Captured here: Celery's task request and backend are per thread, and a report held
        # by the progress window is written from a timer thread.
        self.app, self.request, self.backend = task.app, task.request, task.backend
        self.runtime, self.job = runtime, job
        self.tracker = ProgressTracker(self._publish, min_interval=PROGRESS_MIN_INTERVAL, window=PROGRESS_WINDOW,
                                       hold_start=True, timer=runtime.timers)
        #: The job's preview publisher, made on its first frame (most jobs send none); None
        #: once settled, or where previews are dropped (no Redis result backend).
        self.previews: Any = _UNMADE
        self._previews_lock = threading.Lock()
        job.previews = self
        self.report = self.tracker.report

    def offer(self, data: bytes, mime: str) -> None:
        """Take one live preview frame (the job's :class:`~jobqueue.connectors.base.PreviewSink`)."""
        with self._previews_lock:
            if self.previews is _UNMADE:
                self.previews = publisher_for(self.app, self.job.id, lambda seq: self.tracker.annotate(preview=seq),
                                              backend=self.backend)
            publisher = self.previews
        if publisher is not None:
            publisher.offer(data, mime)

    def _publish(self, progress: dict[str, Any]) -> None:
        job, request = self.job, self.request
        meta = {**progress, "service": job.service, "attempt": job.attempt}
        if self.runtime.is_given_up(job.id):
            return  # the job belongs to another worker now
        try:
            store_guarded(self.backend, request.id, meta, PROGRESS, request)  # = update_state, one round trip
            _send_progress_event(self.app, self.runtime, request, meta)
        except Exception as exc:  # broker or backend out of reach: progress is best effort
            log.warning("job %s: progress not published: %s", job.id, exc)

    def settle(self, *, succeeded: bool = False) -> None:
        """The job's progress ends: its last preview and report are written (a held report
        only when the job did not succeed), nothing after (called before the job's final
        state is stored)."""
        with self._previews_lock:
            publisher, self.previews = self.previews, None
        if publisher is not None and publisher is not _UNMADE:
            publisher.close()
        self.tracker.close(superseded=succeeded)


def _send_progress_event(app: Any, runtime: WorkerRuntime, request: Any, meta: dict[str, Any]) -> None:
    """Send ``task-progress`` through the worker's own event dispatcher when there is one:
    there it joins the job's lifecycle events (Celery buffers the ``task`` group and the
    event loop publishes it, in order with them), so the job never waits for the broker.
    Elsewhere, a dispatcher of its own, as ``Task.send_event`` does."""
    dispatcher = runtime.event_dispatcher()
    if dispatcher is not None and dispatcher.enabled and (not dispatcher.groups or "task" in dispatcher.groups):
        dispatcher.send(TASK_PROGRESS, uuid=request.id, **meta)
        return
    with app.events.default_dispatcher(hostname=request.hostname) as own:
        own.send(TASK_PROGRESS, uuid=request.id, retry=True, retry_policy=PROGRESS_RETRY_POLICY, **meta)


def _mark_cancelled(task: Any, reason: str) -> None:
    # An exception, not a dict: Celery reads REVOKED results back as exceptions.
    task.update_state(state=celery_states.REVOKED, meta=JobCancelled(reason))
    task.send_event(TASK_REVOKED, terminated=True, signum=None, expired=False)


def _end_failed(task: Any, runtime: WorkerRuntime, job: Job, options: dict[str, Any], started: float,
                exc: BaseException) -> None:
    """The connector raised ``exc`` (its progress is settled): raise what Celery is to see --
    the lease lost (another worker has the job), a hand-back (the worker is stopping, or a model
    vanished), ``Ignore`` once it is marked cancelled, a planned ``Retry``, or the clearer error
    the job fails with (out of memory with nowhere to move up, a job that crashed servers on two
    machines) -- or record the end and return: the caller re-raises ``exc`` (the job fails)."""
    if isinstance(exc, (JobCancelled, ConnectorError)) and runtime.is_given_up(job.id):
        raise given_up(job.id) from exc  # lease lost: the job belongs to another worker now
    if isinstance(exc, (JobCancelled, ConnectorError)) and runtime.is_handed_back(job.id):
        record_end(task, started, retried=True)  # the worker is stopping: back to the queue
        raise hand_back_on_stop(task, job) from exc
    if isinstance(exc, JobCancelled):
        record_end(task, started)
        _mark_cancelled(task, str(exc))
        raise Ignore() from exc
    final: BaseException = exc
    if isinstance(exc, ConnectorError):
        final = _retry_if_planned(task, runtime, job, options, started, exc)
    record_end(task, started)
    if final is not exc:
        raise final from exc


def _retry_if_planned(task: Any, runtime: WorkerRuntime, job: Job, options: dict[str, Any], started: float,
                      exc: ConnectorError) -> BaseException:
    """Hand the job back when a model it needs vanished or it ran out of memory (moved up to a
    larger card), or retry it when the plan says so (all raise Celery's ``Retry``); return the
    error it fails with (``exc``, or a clearer one) when it is to fail."""
    request = task.request
    hand_back_if_models_vanished(task, runtime, options, exc)  # raises Retry when it applies
    stuck = move_up_if_out_of_memory(task, runtime, options, exc)  # raises Retry when it can move up
    if stuck is not None:
        return stuck
    poisoned = poisoned_by_crash(task.app, job.id, runtime.identity.machine_id, exc)
    if poisoned is not None:
        log.error("job %s: %s", job.id, poisoned)
        return poisoned
    plan = plan_retry(task.app, job.id, exc, retries=request.retries or 0, max_retries=task.app.settings.max_retries,
                      started_at=time.time() - (time.monotonic() - job.started), timeout=float(job.options["timeout"]))
    if not plan.retry:
        return exc
    log.warning("job %s: %s; retrying in %g s (attempt %d; %s)", job.id, exc, plan.countdown, job.attempt + 1,
                plan.reason)
    record_end(task, started, retried=True)
    # The plan decided; Celery's own limit only has to let this one retry through.
    raise task.retry(exc=exc, countdown=plan.countdown, max_retries=(request.retries or 0) + 1) from exc


def _finish(task: Any, runtime: WorkerRuntime, job: Job, started: float, output: dict[str, Any],
            progress: JobProgress) -> dict[str, Any]:
    """The connector returned ``output``: the job's result, its end recorded to ride with it."""
    try:
        if runtime.is_given_up(job.id):
            raise given_up(job.id)
        identity = runtime.identity
        result = {
            "job_id": job.id, "service": job.service, "worker": identity.node_name,
            "machine_id": identity.machine_id, "gpu": identity.gpu, "attempt": job.attempt,
            "duration": round(time.monotonic() - job.started, 3),
        }
        result.update(output)
        record_end(task, started)
        note_result(task.app, job.id, result, RESULT_REPR_MAX - 1000, task.app.settings.secret_keys_pattern)
    except BaseException:
        progress.settle()
        raise
    progress.settle(succeeded=True)
    return result


def register_job_task(app: Any, *, strategy: Any) -> None:
    """Register the job task on ``app``; ``strategy`` (Celery's ``Task.Strategy``) handles
    each message before the task runs (the hand-back of jobs this worker cannot run). The
    worker's log is filtered so no secret of a payload reaches it (:mod:`jobqueue.worker.masked`)."""
    install_log_filter(app.settings.secret_keys_pattern)

    @app.task(bind=True, name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, shared=False,  # type: ignore[untyped-decorator]
              Strategy=staticmethod(strategy), resultrepr_maxsize=RESULT_REPR_MAX,
              Request="jobqueue.worker.masked:MaskingRequest")  # a class attribute
    def _run_job(
        self: Any, service: str, payload: dict[str, Any], options: dict[str, Any] | None = None,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        options = options or {}
        if options.get("workflow_id"):
            # A workflow step: $prev placeholders from ``previous``, later steps end with it.
            return run_step(self, run_job, service, payload, options, previous)
        return run_job(self, service, payload, options)
