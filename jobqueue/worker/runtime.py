"""The worker's runtime: its connectors and the jobs it is running right now.

One :class:`WorkerRuntime` lives in each worker process (the bootstep creates it and hangs it
on ``app.runtime``). Tasks ask it for their connector and register the job they run, so a
``cancel_job`` control command can reach the running job, and so connector status follows
jobs (active when one starts, idle when it ends).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from jobqueue.config import Settings
from jobqueue.connectors import Connector, Job, connector_class
from jobqueue.errors import UnknownServiceError
from jobqueue.states import ConnectorStatus
from jobqueue.worker.identity import WorkerIdentity

log = logging.getLogger(__name__)

ConnectorFactory = Callable[[str, Settings, int], Connector]


def default_connector_factory(service: str, settings: Settings, gpu: int) -> Connector:
    """Instantiate the registered connector for ``service``."""
    return connector_class(service)(settings, gpu=gpu)


class WorkerRuntime:
    """Connectors and running jobs of one worker process."""

    def __init__(
        self,
        settings: Settings,
        identity: WorkerIdentity,
        *,
        factory: ConnectorFactory = default_connector_factory,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.connectors: dict[str, Connector] = {
            service: factory(service, settings, identity.gpu) for service in identity.connectors
        }
        self._jobs: dict[str, tuple[Job, Connector]] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start every connector (open sockets...)."""
        for connector in self.connectors.values():
            try:
                connector.start()
            except Exception as exc:  # a broken service must not stop the worker
                log.exception("connector %s failed to start", connector.service)
                connector.set_status(ConnectorStatus.ERROR, f"start failed: {exc}")

    def stop(self) -> None:
        """Cancel running jobs' service-side work and stop every connector."""
        for connector in self.connectors.values():
            try:
                connector.stop()
            except Exception:
                log.exception("connector %s failed to stop", connector.service)

    # -- jobs ------------------------------------------------------------------------------
    def connector(self, service: str) -> Connector:
        """The connector for ``service`` or :class:`UnknownServiceError` if this worker lacks it."""
        try:
            return self.connectors[service]
        except KeyError:
            raise UnknownServiceError(
                f"worker {self.identity.node_name} has no {service!r} connector "
                f"(it has: {', '.join(sorted(self.connectors)) or 'none'})"
            ) from None

    def job_started(self, job: Job, connector: Connector) -> None:
        """Register a running job; its connector becomes active."""
        with self._lock:
            self._jobs[job.id] = (job, connector)
        connector.set_status(ConnectorStatus.ACTIVE, f"running job {job.id}")

    def job_finished(self, job: Job, connector: Connector, error: BaseException | None = None) -> None:
        """Forget a job; its connector goes back to idle unless the service itself failed."""
        with self._lock:
            self._jobs.pop(job.id, None)
            still_busy = any(c is connector for _, c in self._jobs.values())
        if connector.status == ConnectorStatus.ACTIVE and not still_busy:
            connector.set_status(ConnectorStatus.IDLE)

    def running_jobs(self) -> list[str]:
        """Ids of the jobs running now."""
        with self._lock:
            return list(self._jobs)

    def cancel(self, job_id: str) -> bool:
        """Cancel a running job: flag it and tell its service. False if it is not running here."""
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False
        job, connector = entry
        job.cancelled.set()
        try:
            connector.cancel(job)
        except Exception:
            log.exception("connector %s failed to cancel job %s", connector.service, job_id)
        return True

    def snapshot(self) -> dict[str, Any]:
        """Identity plus every connector's status, as the control command returns it."""
        return {
            **self.identity.as_fields(),
            "connectors": {
                s: {"status": c.status.value, "message": c.message, "details": c.details}
                for s, c in self.connectors.items()
            },
            "running": self.running_jobs(),
        }

    # -- health ----------------------------------------------------------------------------
    def check_health(self) -> None:
        """Ask every connector's service once and record the answer.

        A connector running a job stays ``active`` while its service answers healthy.
        """
        for connector in self.connectors.values():
            try:
                health = connector.check_health()
            except Exception as exc:  # check_health must not raise; be safe anyway
                connector.set_status(ConnectorStatus.ERROR, f"health check failed: {exc}")
                continue
            status = health.status
            if status == ConnectorStatus.IDLE and connector.status == ConnectorStatus.ACTIVE:
                status = ConnectorStatus.ACTIVE
            message = connector.message if status == ConnectorStatus.ACTIVE else health.message
            connector.set_status(status, message, health.details)
