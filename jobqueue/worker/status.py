"""Connector status reporting: every change sent within a short window, the full set re-sent on a steady beat.

The earlier system sent connector status once at start-up and never again, so the monitor's
badges lied. Here a :class:`StatusReporter` lives as long as the worker process:

* :meth:`StatusReporter.record` is called on every status change (from the health thread, the
  task thread or the main thread). It numbers the report with the next per-worker sequence
  number, remembers it as the connector's current report and queues a ``connector-status``
  event (``beat=False``).
* One sender thread sends the queued events in sequence order, together once the oldest has
  waited ``window`` seconds, each connector's ``active``/``idle`` flips of the window coalesced
  into its latest (jobs that start and end within the window cost no event; every other
  change is sent; the latest status is never held back longer than the window), and, every ``beat_interval``
  seconds, queues the full set again (``beat=True``), unchanged or not, so a consumer can tell
  a fresh status from a stale one (``timestamp`` + ``interval``).
* The sending function is attached by the consumer bootstep when the broker connection is up
  and detached when it goes down; events queued meanwhile are kept (bounded) and sent on the
  next :meth:`~StatusReporter.attach`, followed by a full re-send.
* A failure to send is logged and never stops the thread: the next beat repairs it.

Sequence numbers start at the process's start time in milliseconds, so a restarted worker's
reports still compare greater than the ones its previous process sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobqueue.shared.names import CONNECTOR_STATUS
from jobqueue.states import ConnectorStatus
from jobqueue.worker.identity import WorkerIdentity

log = logging.getLogger(__name__)

#: ``send(event_type, fields)``: publishes one event (raises when it cannot).
Sender = Callable[[str, dict[str, Any]], None]

#: The job-driven statuses whose flips within one window are coalesced.
_FLIPS = frozenset({ConnectorStatus.ACTIVE, ConnectorStatus.IDLE})

#: How many events are kept while no sender is attached; older ones are dropped (the full
#: re-send on attach repairs any gap).
MAX_PENDING = 1000


@dataclass(frozen=True)
class StatusReport:
    """The last reported status of one connector."""

    service: str
    status: ConnectorStatus
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Sequence number of the last event sent (or queued) for this connector.
    seq: int = 0
    #: Wall time the connector entered ``status``.
    since: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as the control command returns it."""
        return {
            "status": self.status.value,
            "message": self.message,
            "details": dict(self.details),
            "seq": self.seq,
            "since": self.since,
        }


def initial_seq(now: float | None = None) -> int:
    """The first sequence number of a process: its start time in milliseconds."""
    return int((time.time() if now is None else now) * 1000)


class StatusReporter:
    """Numbers, remembers and sends connector status events for one worker."""

    def __init__(
        self,
        identity: WorkerIdentity,
        *,
        beat_interval: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        first_seq: int | None = None,
        window: float = 0.0,
    ) -> None:
        self.identity = identity
        self.beat_interval = float(beat_interval)
        #: Changes are sent together once the first of them has waited this long (s).
        self.window = max(0.0, float(window))
        self._clock = clock
        self._wall = wall_clock
        self._seq = initial_seq(wall_clock()) if first_seq is None else first_seq
        self._reports: dict[str, StatusReport] = {}
        self._pending: deque[tuple[StatusReport, bool]] = deque(maxlen=MAX_PENDING)
        self._sender: Sender | None = None
        self._cond = threading.Condition()
        self._busy = False  # the thread is sending events it already took from _pending
        self._pending_since: float | None = None  # when the oldest unsent change was queued
        self._urgent = False  # flush() waits: send without waiting out the window
        self._stopping = False
        self._next_beat = clock() + self.beat_interval
        self._thread: threading.Thread | None = None
        #: Events sent / failed to send (for tests and logs).
        self.sent = 0
        self.failed = 0

    # -- recording -------------------------------------------------------------------------
    def record(
        self,
        service: str,
        status: ConnectorStatus,
        message: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> StatusReport | None:
        """Record a status of ``service``; queue an event when status or message changed.

        Returns the new report, or None when nothing changed (a repeated report is not an
        event: the beat re-sends unchanged statuses).
        """
        with self._cond:
            last = self._reports.get(service)
            if last is not None and last.status == status and last.message == message:
                if details is not None and dict(details) != dict(last.details):
                    # Facts like free VRAM change on every check: keep them for the next beat
                    # and the control command, but they are not a status change.
                    self._reports[service] = StatusReport(
                        service, status, message, dict(details), last.seq, last.since
                    )
                return None
            since = self._wall() if last is None or last.status != status else last.since
            kept = dict(details) if details is not None else dict(last.details if last else {})
            return self._enqueue(service, status, message, kept, since, beat=False)

    def _queue(self, report: StatusReport, *, beat: bool) -> StatusReport:
        """Number ``report`` (a copy), remember it and queue its event. Caller holds ``_cond``."""
        return self._enqueue(report.service, report.status, report.message, report.details, report.since, beat=beat)

    def _enqueue(self, service: str, status: ConnectorStatus, message: str, details: Mapping[str, Any],
                 since: float, *, beat: bool) -> StatusReport:
        """Number a report, remember it and queue its event. Caller holds ``_cond``."""
        self._seq += 1
        numbered = StatusReport(service, status, message, details, self._seq, since)
        self._reports[service] = numbered
        first = not self._pending
        if first:
            self._pending_since = self._clock()
        self._pending.append((numbered, beat))  # the event is built by the sender thread
        if first or self.window <= 0:
            # Only the first change of a window moves the sender's wake-up time; it already
            # sleeps until the window ends for the later ones (two per job: active, idle).
            self._cond.notify_all()
        return numbered

    def event_fields(self, report: StatusReport, *, beat: bool) -> dict[str, Any]:
        """The fields of one ``connector-status`` event (the Dispatcher adds the rest)."""
        return {
            **self.identity.as_fields(),
            "service": report.service,
            "status": report.status.value,
            "message": report.message,
            "details": dict(report.details),
            "seq": report.seq,
            "since": report.since,
            "beat": beat,
            "interval": self.beat_interval,
        }

    def queue_full_set(self) -> None:
        """Queue every connector's current report again (``beat=True``)."""
        with self._cond:
            self._queue_full_set()

    def _queue_full_set(self) -> None:
        for report in list(self._reports.values()):
            self._queue(report, beat=True)
        self._next_beat = self._clock() + self.beat_interval

    # -- reading ---------------------------------------------------------------------------
    @property
    def seq(self) -> int:
        """The last sequence number handed out."""
        with self._cond:
            return self._seq

    def reports(self) -> dict[str, StatusReport]:
        """The last report of every connector."""
        with self._cond:
            return dict(self._reports)

    def snapshot(self) -> dict[str, Any]:
        """Reports plus the reporter's own facts, as the control command returns them."""
        with self._cond:
            return {
                "seq": self._seq,
                "interval": self.beat_interval,
                "connectors": {s: r.as_dict() for s, r in self._reports.items()},
            }

    # -- sending ---------------------------------------------------------------------------
    def attach(self, sender: Sender) -> None:
        """Send through ``sender`` from now on; queued events go first, then the full set."""
        with self._cond:
            self._sender = sender
            self._queue_full_set()
            self._cond.notify_all()  # the thread slept without a deadline while detached

    def detach(self) -> None:
        """Stop sending (broker connection going down); events queue up until attached."""
        with self._cond:
            self._sender = None

    def _take(self) -> tuple[list[dict[str, Any]], Sender | None]:
        """Wait for something to send (or the beat); return the events and the sender."""
        with self._cond:
            while not self._stopping:
                if self._sender is not None and self._clock() >= self._next_beat:
                    self._queue_full_set()
                due = (self._pending_since or 0.0) + self.window
                if self._sender is not None and self._pending and (self._urgent or self._clock() >= due):
                    events = self._events(list(self._pending))
                    self._pending.clear()
                    self._busy = True
                    self._urgent = False
                    return events, self._sender
                timeout = self._next_beat - self._clock() if self._sender is not None else None
                if timeout is not None and self._pending:
                    timeout = min(timeout, due - self._clock())
                self._cond.wait(timeout if timeout is None else max(timeout, 0.0))
            return [], None

    def _events(self, pending: list[tuple[StatusReport, bool]]) -> list[dict[str, Any]]:
        """The events of ``pending`` (in seq order). With a window, a connector's run of
        ``active``/``idle`` reports within one window is coalesced into its latest (a beat
        only if all of them were beats): jobs starting and ending within 50 ms flip a badge
        faster than anyone could see, and the latest report carries the latest seq. Every
        other change (starting, waiting, error, offline) is sent."""
        if self.window <= 0:
            return [self.event_fields(report, beat=beat) for report, beat in pending]
        kept: list[tuple[StatusReport, bool]] = []
        last: dict[str, int] = {}  # service -> index in kept of its latest report
        for report, beat in pending:
            at = last.get(report.service)
            if at is not None and kept[at][0].status in _FLIPS and report.status in _FLIPS:
                kept[at] = (report, beat and kept[at][1])
                continue
            last[report.service] = len(kept)
            kept.append((report, beat))
        kept.sort(key=lambda item: item[0].seq)
        return [self.event_fields(report, beat=beat) for report, beat in kept]

    def _send_all(self, events: list[dict[str, Any]], sender: Sender) -> None:
        for fields in events:
            try:
                sender(CONNECTOR_STATUS, fields)
                self.sent += 1
            except Exception:  # the broker may be reconnecting; the next beat repairs it
                self.failed += 1
                log.warning("could not send %s event (seq %s)", CONNECTOR_STATUS, fields.get("seq"), exc_info=True)

    def _run(self) -> None:
        while True:
            events, sender = self._take()
            if sender is None:
                return
            try:
                self._send_all(events, sender)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was handed to the sender; False on timeout."""
        deadline = self._clock() + timeout
        with self._cond:
            self._urgent = True  # what waits for the window goes now
            self._cond.notify_all()
            try:
                while (self._pending and self._sender is not None) or self._busy:
                    remaining = deadline - self._clock()
                    if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                        return False
                    self._cond.wait(remaining)
                return not self._pending
            finally:
                self._urgent = False

    def start(self) -> StatusReporter:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self._run, name="jobqueue-status", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the sender thread (call :meth:`flush` first to send what is queued)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
