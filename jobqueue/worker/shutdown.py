"""Soft shutdown: on SIGTERM a worker stops taking jobs, gives the running one a grace, then
hands it back to its queue and exits, well before the orchestrator's SIGKILL.

SIGTERM is how Kubernetes, systemd and a spot reclaim stop a process. Celery answers it with
its warm shutdown: the consumer stops taking messages, and the worker waits for the running
task for as long as it takes -- until the orchestrator loses patience and SIGKILLs it, and the
job comes back only after the visibility timeout (Redis) or the connection's end (RabbitMQ).
Celery 5.5's own soft shutdown (``worker_soft_shutdown_timeout``) does not fit: it acts only on
a cold shutdown (SIGQUIT, or SIGTERM with ``REMAP_SIGTERM=SIGQUIT``), always sleeps its whole
timeout, even when the task ended long before, and then cancels tasks by terminating pool
processes, which the threads pool jobqueue runs cannot do.

:class:`SoftShutdownStep` does it here. It is a worker bootstep that starts after the
runtime and the lease, so it stops before them (Celery stops a worker's steps in reverse, just
after the consumer has stopped taking messages): while it waits, the lease is still renewed
and the connectors still run. Its ``stop``:

1. waits up to ``soft_shutdown_timeout`` (``JOBQUEUE_SOFT_SHUTDOWN_TIMEOUT``, 20 s by default)
   for the running job to end on its own: a job shorter than the grace completes here, and the
   worker exits right after it, not at the end of the grace;
2. then interrupts it on its service (:meth:`~jobqueue.worker.runtime.WorkerRuntime.hand_back`,
   the cancel path), and the job task hands it back (:func:`hand_back_on_stop`): its message
   is sent to its queue again with its retry count unchanged and the old one acked, and its
   state reads ``queued`` (a :class:`~jobqueue.errors.WorkerStopping` hand-back, not a retry);
3. waits at most :data:`HAND_BACK_WAIT` s for that, then lets Celery finish the shutdown.

So a worker exits within about ``soft_shutdown_timeout`` + the service's reaction to a cancel
(a second or two) after SIGTERM; give the orchestrator's grace (``terminationGracePeriodSeconds``,
``TimeoutStopSec``) at least 10 s more. A worker SIGKILLed anyway loses nothing: its job's lease
stops and the job is redelivered after the visibility timeout (docs/deployment.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.exceptions import Retry

from jobqueue.connectors import Job
from jobqueue.errors import WorkerStopping
from jobqueue.transport.internals import active_requests
from jobqueue.worker.bootsteps import LeaseStep, RuntimeStep

log = logging.getLogger(__name__)

#: Longest (s) the stop waits for interrupted jobs to be handed back.
HAND_BACK_WAIT = 10.0
#: How often (s) the stop looks whether the running job ended.
POLL = 0.1


class SoftShutdown:
    """The grace, then the hand-back, of the jobs a stopping worker runs (see the module doc).

    ``running()`` gives the ids of the jobs running on a service, ``busy()`` whether Celery
    still holds an active request (a job whose body has not ended), ``hand_back(ids)``
    interrupts jobs so that they go back to their queue.
    """

    def __init__(self, grace: float, *, running: Callable[[], list[str]], hand_back: Callable[[list[str]], None],
                 busy: Callable[[], bool] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.running = running
        self.hand_back = hand_back
        self.busy = busy or (lambda: bool(running()))
        self.clock = clock
        self._pause = threading.Event()
        #: Ids of the jobs handed back (for logs and tests).
        self.handed_back: list[str] = []

    def _wait_idle(self, seconds: float) -> bool:
        """Poll until nothing runs; False when ``seconds`` passed first."""
        deadline = self.clock() + seconds
        while self.busy():
            if self.clock() >= deadline:
                return False
            self._pause.wait(POLL)
        return True

    def run(self) -> list[str]:
        """Wait out the grace, hand back what still runs; return the ids handed back."""
        if not self.busy():
            return []
        log.warning("soft shutdown: %s running; %g s to end before it is handed back to its queue",
                    ", ".join(self.running()) or "a job", self.grace)
        if self._wait_idle(self.grace):
            log.warning("soft shutdown: the running job ended within the grace")
            return []
        deadline = self.clock() + HAND_BACK_WAIT
        while self.busy() and self.clock() < deadline:
            pending = [job_id for job_id in self.running() if job_id not in self.handed_back]
            if pending:
                self.handed_back.extend(pending)
                self.hand_back(pending)
            self._pause.wait(POLL)
        if self.busy():
            log.error("soft shutdown: jobs still running %g s after they were handed back", HAND_BACK_WAIT)
        return list(self.handed_back)


def hand_back_on_stop(task: Any, job: Job) -> Retry:
    """What the job task raises for a job interrupted by a stopping worker: its message goes to
    its queue again (retry count unchanged, no countdown) and Celery's ``Retry`` names a
    :class:`~jobqueue.errors.WorkerStopping`, so the job reads ``queued``, not ``retrying``.
    The caller has recorded the attempt's end (``record_end(..., retried=True)``)."""
    request = task.request
    again = task.signature_from_request(request, None, None, countdown=0, retries=request.retries or 0)
    again.apply_async()
    message = f"worker {request.hostname} stopped before job {job.id} ended: handed back to its queue"
    log.warning("job %s handed back to its queue (the worker is stopping)", job.id)
    return Retry(message, exc=WorkerStopping(message, {"worker": request.hostname}), when=0, sig=again)


class SoftShutdownStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Runs :class:`SoftShutdown` when the worker stops (warm shutdown: SIGTERM, SIGINT)."""

    label = "jobqueue soft shutdown"
    #: Started after them, so stopped before them: the lease, the connectors and the pool (whose
    #: stop waits for the running task without a bound) outlive the grace.
    requires = (RuntimeStep, LeaseStep, "celery.worker.components:Pool")

    def stop(self, worker: Any) -> None:
        runtime = getattr(worker.app, "runtime", None)
        if runtime is None:
            return
        SoftShutdown(float(worker.app.settings.soft_shutdown_timeout), running=runtime.running_jobs,
                     hand_back=runtime.hand_back,
                     busy=lambda: bool(runtime.running_jobs()) or bool(active_requests())).run()
