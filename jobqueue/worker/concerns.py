"""The worker's concerns, in one list, in the order they start and run (as dramatiq's
``default_middleware``): everything a jobqueue worker adds to a plain Celery worker.

Celery offers four hooks, and each concern uses the ones it needs: bootsteps of the worker
(they live as long as the process) and of its consumer (they restart with the broker
connection), signals around each task, and the tasks themselves (a task's ``Strategy``
handles each message before the task runs). :func:`install` puts every concern of
:data:`CONCERNS` into an app, once: signal handlers are connected with a ``dispatch_uid``, so
installing into a second app (or twice) connects nothing twice.

The transport (:mod:`jobqueue.transport`) never imports this package: the app names the worker
class it builds (``celery -A jobqueue worker``: :class:`jobqueue.worker.node.Worker`), and that
class installs these concerns into the app before Celery builds the worker's blueprints. A
client only sends tasks by name and never loads worker code.

Start-up order (the worker's bootsteps, then the consumer's, as Celery starts them):

1. ``runtime``: connectors, identity, status reporter, health loop, and warm routing's view of
   the other workers (:mod:`jobqueue.worker.warm_peers`); the first health check runs before
   the consumer starts.
2. ``lease`` and ``orphans``: background threads of the worker (lease on Redis only),
   ``exit-when-idle`` (only with ``JOBQUEUE_EXIT_WHEN_IDLE``: :mod:`jobqueue.worker.idle`),
   ``moved-up`` (fails jobs moved up after out of memory that waited too long:
   :mod:`jobqueue.worker.moveup`),
   and ``soft-shutdown`` (after the runtime, the lease and the pool, so it stops before them: on
   SIGTERM the running job gets its grace, then goes back to its queue:
   :mod:`jobqueue.worker.shutdown`).
3. ``poison`` (consumer, after its event dispatcher): Celery's refusal handlers wrapped, the
   transport's poison hook set on the connection; on RabbitMQ a worker step declares the
   consumed queues first (a queue of the other type stops the worker, saying how to migrate).
4. ``status`` (consumer, after its event dispatcher): statuses and progress leave through it.
5. ``queue-gates`` (consumer, after its task consumer): service, capability and (held) pinned
   queues are added or cancelled only once the consumer can take messages -- when Celery's
   event loop registers the steps, just before it consumes. A queue consumed earlier can
   deliver a waiting message to a consumer without callbacks (on RabbitMQ that killed the
   worker at start-up).
6. ``fair-share`` (consumer, after its task consumer): the tenant queues of the consumer's
   queues, and (with ``JOBQUEUE_FAIR_SHARE``) the order of each fetch on Redis
   (:mod:`jobqueue.worker.fairshare`).
7. ``link-watch`` (consumer, after its task consumer): on Redis, reconnects the consumer when
   its BRPOP goes unanswered too long -- a frozen broker link; on both brokers, bounds the close
   of the old event dispatcher's connection when it reconnects (:mod:`jobqueue.worker.linkwatch`).
8. ``control``: remote control commands, answered once the consumer's pidbox runs.

Then, per message and task, in this order: the ``job-task``'s strategy -- a tenant's running
quota (:func:`~jobqueue.worker.tenant_quota.with_running_quota`) around the hand-back
(:func:`~jobqueue.worker.handback.requirements_strategy`), both before the task is accepted --,
the ``running-quota`` handlers (postrun, revoked: the place is free), the ``job-record``
handlers (received, prerun, postrun, revoked) and ``webhooks`` (postrun, revoked, after the job
record: a job's end is stored before its webhook is enqueued).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import signals

from jobqueue.worker import attempts, bootsteps, tenant_quota, webhooks
from jobqueue.worker.fairshare import FairShareStep
from jobqueue.worker.handback import requirements_strategy
from jobqueue.worker.idle import IdleStep
from jobqueue.worker.linkwatch import LinkWatchStep
from jobqueue.worker.moveup import MoveUpStep
from jobqueue.worker.poison import PoisonStep, QueueCheckStep
from jobqueue.worker.shutdown import SoftShutdownStep
from jobqueue.worker.task import register_job_task

#: ``(signal, handler)``: a Celery signal and the module-level function it calls.
Handler = tuple[Any, Callable[..., Any]]


@dataclass(frozen=True)
class Concern:
    """One cross-cutting concern of the worker and the Celery hooks it is installed through."""

    name: str
    #: Steps of the worker blueprint (started in Celery's order of their ``requires``).
    worker_steps: tuple[type, ...] = ()
    #: Steps of the consumer blueprint (they restart with the broker connection).
    consumer_steps: tuple[type, ...] = ()
    #: Called with the app to register tasks (or commands) the concern owns.
    register: Callable[[Any], None] | None = None
    #: Signal handlers, connected in this order.
    handlers: tuple[Handler, ...] = ()

    def install(self, app: Any) -> None:
        """Add this concern's steps, tasks and handlers to ``app`` (idempotent)."""
        for step in self.worker_steps:
            app.steps["worker"].add(step)
        for step in self.consumer_steps:
            app.steps["consumer"].add(step)
        if self.register is not None:
            self.register(app)
        for signal, handler in self.handlers:
            signal.connect(handler, weak=False, dispatch_uid=f"jobqueue.{self.name}.{signal.name}")


def _register_control(app: Any) -> None:
    from jobqueue.worker import control  # importing it registers the commands (Celery's Panel)

    control.register()


def _register_job_task(app: Any) -> None:
    register_job_task(app, strategy=tenant_quota.with_running_quota(requirements_strategy))


#: The worker's concerns, in the order they start and run (see the module's docstring).
CONCERNS: tuple[Concern, ...] = (
    Concern("runtime", worker_steps=(bootsteps.RuntimeStep,)),
    Concern("lease", worker_steps=(bootsteps.LeaseStep,)),
    Concern("orphans", worker_steps=(bootsteps.OrphanStep,)),
    Concern("exit-when-idle", worker_steps=(IdleStep,)),
    Concern("soft-shutdown", worker_steps=(SoftShutdownStep,)),
    Concern("moved-up", worker_steps=(MoveUpStep,)),
    Concern("poison", worker_steps=(QueueCheckStep,), consumer_steps=(PoisonStep,)),
    Concern("status", consumer_steps=(bootsteps.StatusStep,)),
    Concern("queue-gates", consumer_steps=(bootsteps.QueueGateStep,)),
    Concern("fair-share", consumer_steps=(FairShareStep,)),
    Concern("link-watch", consumer_steps=(LinkWatchStep,)),
    Concern("control", register=_register_control),
    Concern("job-task", register=_register_job_task),  # with the running-quota and hand-back strategy
    Concern("running-quota", worker_steps=(tenant_quota.RunningQuotaStep,), handlers=(
        (signals.task_postrun, tenant_quota.on_task_postrun),
        (signals.task_revoked, tenant_quota.on_task_revoked),
    )),
    Concern("job-record", handlers=(
        (signals.task_received, attempts.on_task_received),
        (signals.task_prerun, attempts.on_task_prerun),
        (signals.task_postrun, attempts.on_task_postrun),
        (signals.task_revoked, attempts.on_task_revoked),
    )),
    Concern("webhooks", register=webhooks.register_delivery_task, handlers=(
        (signals.task_postrun, webhooks.on_task_postrun),
        (signals.task_revoked, webhooks.on_task_revoked),
    )),
)

#: Attribute marking an app the concerns were installed into.
_INSTALLED = "_jobqueue_worker_installed"


def install(app: Any) -> Any:
    """Install every concern of :data:`CONCERNS` into ``app``, in order, once; return ``app``."""
    if not getattr(app, _INSTALLED, False):
        for concern in CONCERNS:
            concern.install(app)
        setattr(app, _INSTALLED, True)
    return app
