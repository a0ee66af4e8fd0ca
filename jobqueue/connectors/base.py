"""The connector contract: how a task talks to one image server.

A connector is the narrow extension point of jobqueue: a new image server is one new module
with one subclass of :class:`Connector`, registered by service name in
:mod:`jobqueue.connectors`. Tasks stay thin; the protocol logic lives here.

A connector instance lives in a worker process for the worker's whole life. The worker's
bootstep (:mod:`jobqueue.worker.bootsteps`) calls :meth:`Connector.check_health` on a steady
interval and publishes every status change; the task calls :meth:`Connector.run` for each job.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from jobqueue.config import Settings
from jobqueue.connectors.orphans import OrphanBook
from jobqueue.connectors.payloads import PayloadModel, schema_of
from jobqueue.errors import InvalidPayloadError, JobCancelled, JobTimedOut
from jobqueue.states import ConnectorStatus


@dataclass(frozen=True)
class Health:
    """What one health check found: a status, why, and facts about the service."""

    status: ConnectorStatus
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


class ProgressReporter(Protocol):
    """Callable a connector uses to report real progress of a job."""

    def __call__(
        self,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        percent: float | None = None,
        message: str | None = None,
        node: str | None = None,
    ) -> object: ...


class PreviewSink(Protocol):
    """Where a job's live preview images go (see :class:`jobqueue.shared.previews.PreviewPublisher`)."""

    def offer(self, data: bytes, mime: str) -> None: ...


@dataclass
class Job:
    """One attempt at running a job, as a connector sees it."""

    #: The job id (also the Celery task id).
    id: str
    service: str
    payload: dict[str, Any]
    #: Per-job options: ``timeout``, ``stall_timeout``... (None: the worker's settings).
    options: dict[str, Any] = field(default_factory=dict)
    #: Which attempt this is (0 for the first run, counts Celery retries).
    attempt: int = 0
    #: Monotonic time the attempt started.
    started: float = field(default_factory=time.monotonic)
    #: Absolute monotonic deadline; None for no limit.
    deadline: float | None = None
    #: Set when the job is cancelled; connectors wait on it instead of sleeping.
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: Receives live previews (the task sets it; None: previews are dropped).
    previews: PreviewSink | None = None

    def report_preview(self, data: bytes, mime: str = "image/jpeg") -> None:
        """Offer the latest live preview image of this job (encoded bytes and their MIME type).

        Cheap and safe to call for every frame the service sends: the sink throttles (at most
        2 per second per job), shrinks what is too big, keeps only the latest per job and tells
        monitors. Never raises; without a sink the frame is dropped.
        """
        sink = self.previews
        if sink is None or not data:
            return
        try:
            sink.offer(bytes(data), mime)
        except Exception:  # a preview must never break the job
            logging.getLogger(__name__).warning("job %s: preview dropped", self.id, exc_info=True)

    def check(self) -> None:
        """Raise :class:`JobCancelled` or :class:`JobTimedOut` when the job must stop now."""
        if self.cancelled.is_set():
            raise JobCancelled("job was cancelled", {"job_id": self.id})
        if self.deadline is not None and time.monotonic() >= self.deadline:
            limit = self.options.get("timeout")
            raise JobTimedOut(f"job exceeded its timeout of {limit} s", {"timeout": limit})

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless the job is cancelled or times out first (then raise)."""
        end = time.monotonic() + seconds
        if self.deadline is not None:
            end = min(end, self.deadline)
        remaining = end - time.monotonic()
        if remaining > 0:
            self.cancelled.wait(remaining)
        self.check()


StatusListener = Callable[["Connector", ConnectorStatus, str], None]


class Connector(ABC):
    """Base class of every connector. Subclasses set :attr:`service` and implement the
    abstract methods; status bookkeeping is shared here."""

    #: Service name jobs use to address this connector (also its queue name).
    service: ClassVar[str]
    #: An example payload, shown on the client page and in docs.
    example_payload: ClassVar[dict[str, Any]] = {}
    #: The pydantic models of this connector's payloads (:mod:`jobqueue.connectors.payloads`),
    #: one per kind of request; empty: any JSON object.
    payload_models: ClassVar[tuple[type[PayloadModel], ...]] = ()

    def __init__(self, settings: Settings, *, gpu: int = 0) -> None:
        self.settings = settings
        self.gpu = gpu
        self._lock = threading.Lock()
        self._status = ConnectorStatus.STARTING
        self._message = ""
        self._details: dict[str, Any] = {}
        self._listeners: list[StatusListener] = []
        #: Work handed to the service that must be made sure gone (the worker runtime gives it
        #: a Redis-backed book per worker identity, so it survives a restart).
        self.orphans = OrphanBook()

    # -- payload ---------------------------------------------------------------------------
    @classmethod
    def validate(cls, payload: Any) -> dict[str, Any]:
        """Check a payload before it is enqueued; return it (normalised) or raise
        :class:`InvalidPayloadError` saying what is wrong."""
        if not isinstance(payload, dict):
            raise InvalidPayloadError(f"{cls.service}: payload must be a JSON object")
        return payload

    @classmethod
    def payload_schema(cls) -> dict[str, Any]:
        """The JSON schema of this connector's payload (``oneOf`` when it has several kinds)."""
        return schema_of(cls.payload_models, cls.service)

    @classmethod
    def required_models(cls, payload: Mapping[str, Any]) -> list[str]:
        """Models a (validated) payload names itself, e.g. a workflow's loader inputs; the job
        then runs only where they are present. The base connector's payloads name none."""
        return []

    def capabilities(self, details: Mapping[str, Any]) -> dict[str, Any] | None:
        """What this connector's service offers right now: ``{"models": {folder: [names]},
        "vram_total_gb": ..., "vram_free_gb": ...}`` (see :mod:`jobqueue.shared.requirements`).

        Called by the health loop after a healthy check, with that check's details. None when
        it could not be read this time (the last known capabilities stay). Must not raise.
        """
        return {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Open long-lived resources (sockets, sessions). Called once by the worker."""

    def stop(self) -> None:
        """Close what :meth:`start` opened. Called once when the worker stops."""

    @abstractmethod
    def check_health(self) -> Health:
        """Ask the service whether it can take jobs. Must not raise; must return quickly."""

    @abstractmethod
    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        """Run ``job`` to the end and return its JSON-serialisable result.

        Raise a :class:`~jobqueue.errors.ConnectorError` subclass on failure. Call
        ``job.check()`` (or ``job.sleep()``) often enough that cancel and timeout take effect.
        """

    def cancel(self, job: Job) -> None:
        """Stop ``job`` on the service side if it is queued or running there.

        The base implementation only flags the job; connectors whose service holds its own
        queue also tell the service.
        """
        job.cancelled.set()

    # -- status ----------------------------------------------------------------------------
    @property
    def status(self) -> ConnectorStatus:
        return self._status

    @property
    def message(self) -> str:
        return self._message

    @property
    def details(self) -> dict[str, Any]:
        return dict(self._details)

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(connector, status, message)`` on every status change."""
        self._listeners.append(listener)

    def set_status(
        self,
        status: ConnectorStatus,
        message: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a status; notify listeners when status or message changed. Returns whether
        anything changed."""
        with self._lock:
            if details is not None:
                self._details = dict(details)
            changed = status != self._status or message != self._message
            self._status, self._message = status, message
        if changed:
            for listener in list(self._listeners):
                listener(self, status, message)
        return changed
