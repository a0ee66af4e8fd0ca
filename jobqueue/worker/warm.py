"""What this worker has loaded, tracked from what it ran, and when it takes cold jobs.

No server says which checkpoints it holds in memory in a way a worker could route on
(ComfyUI has no API for it; A1111/Forge names only the checkpoint of its options), so the
worker tracks it from its own jobs (docs/connectors.md, "Warm routing"):

* a job's checkpoint (:func:`jobqueue.shared.warm.checkpoint_of`) counts as loaded from the
  moment the job starts; after the job it stays loaded when the job succeeded, and nothing
  counts as loaded after a failure (an out-of-memory error unloads everything, a crash empties
  the server) or after a job naming no checkpoint (ComfyUI's classic cache keeps only the
  last prompt's loader outputs; A1111 reloads the checkpoint of its options). A connector that
  turns unhealthy forgets what it had (the server may have restarted).
* every job's duration is kept apart for cold (checkpoint not loaded at its start) and warm
  runs; their difference (moving averages) is the load cost the worker reports
  (``load_seconds``), which ETAs add for a cold worker.
* :meth:`WarmState.cold_to_open` applies :func:`jobqueue.shared.warm.cold_to_open` to this
  worker's idle time and to what idle peers hold (:meth:`WarmState.set_peers`, fed by
  :class:`jobqueue.worker.warm_peers.WarmPeers`); the capability gate asks it which model
  queues to consume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobqueue.shared.warm import Peers, cold_order, cold_to_open

#: Weight of the newest duration in the moving averages of cold and warm runs.
EWMA_WEIGHT = 0.3


@dataclass
class _Running:
    service: str
    checkpoint: str | None
    cold: bool
    started: float


class WarmState:
    """This worker's loaded checkpoints per service, load cost and idle time (thread-safe)."""

    def __init__(self, grace: float, max_wait: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.max_wait = max_wait
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[str, ...]] = {}
        self._running: dict[str, _Running] = {}
        now = clock()
        #: When the worker last became idle, and when its cold queues were last open.
        self._idle_since = now
        self._cold_seen = now
        #: Moving averages of job durations per service: cold runs and warm runs.
        self._cold_avg: dict[str, float] = {}
        self._warm_avg: dict[str, float] = {}
        #: Per service, what the other workers hold (:class:`~jobqueue.shared.warm.Peers`).
        self._peers: dict[str, Peers] = {}

    def loaded(self, service: str) -> tuple[str, ...]:
        """The checkpoints ``service`` has loaded, as far as this worker knows."""
        with self._lock:
            return self._loaded.get(service, ())

    def load_seconds(self, service: str) -> float | None:
        """The measured cost of one checkpoint load on ``service`` (None until both a cold and
        a warm run were seen)."""
        with self._lock:
            cold, warm = self._cold_avg.get(service), self._warm_avg.get(service)
        return None if cold is None or warm is None else round(max(0.0, cold - warm), 3)

    def cold_to_open(self, service: str, cold: list[str]) -> set[str]:
        """Which of ``service``'s ``cold`` checkpoints to take jobs of now (see the module doc)."""
        with self._lock:
            now = self._clock()
            return cold_to_open(cold, grace=self.grace, busy=bool(self._running), idle_for=now - self._idle_since,
                                closed_for=now - self._cold_seen, max_wait=self.max_wait,
                                held_by_idle_peer=self._peers.get(service, Peers()).idle_held)

    def preferred(self, service: str, cold: list[str]) -> list[str]:
        """``cold`` checkpoints in the order this worker prefers them (:func:`~jobqueue.shared.warm.cold_order`)."""
        with self._lock:
            peers = self._peers.get(service, Peers())
        return cold_order(cold, peers)

    def _cold_open_locked(self, now: float) -> bool:
        return bool(cold_to_open(["-"], grace=self.grace, busy=bool(self._running), idle_for=now - self._idle_since,
                                 closed_for=now - self._cold_seen, max_wait=self.max_wait))

    def set_peers(self, service: str, peers: Peers) -> bool:
        """Record what the other workers of ``service`` hold; True if that changed."""
        with self._lock:
            before = self._peers.get(service)
            self._peers[service] = peers
            return before != peers

    def is_idle(self) -> bool:
        """True while no job runs here."""
        with self._lock:
            return not self._running

    def started(self, job_id: str, service: str, checkpoint: str | None) -> bool:
        """A job starts; returns whether it is cold (its checkpoint was not loaded)."""
        with self._lock:
            now = self._clock()
            if self._cold_open_locked(now):  # it was taken with the cold queues open
                self._cold_seen = now
            loaded = self._loaded.get(service, ())
            cold = checkpoint is not None and checkpoint not in loaded
            self._running[job_id] = _Running(service, checkpoint, cold, now)
            self._loaded[service] = (checkpoint,) if checkpoint is not None else ()
            return cold

    def finished(self, job_id: str, ok: bool) -> None:
        """A job ended (``ok``: it succeeded); see the module doc for what stays loaded."""
        with self._lock:
            now = self._clock()
            run = self._running.pop(job_id, None)
            if not self._running:
                self._idle_since = now
            if run is None:
                return
            if not ok:
                self._loaded[run.service] = ()
                return
            if run.checkpoint is not None:
                averages = self._cold_avg if run.cold else self._warm_avg
                took = now - run.started
                last = averages.get(run.service)
                averages[run.service] = took if last is None else last + EWMA_WEIGHT * (took - last)

    def forget(self, service: str) -> None:
        """``service`` went down: nothing is known to be loaded there any more."""
        with self._lock:
            self._loaded[service] = ()

    def capabilities(self, service: str) -> dict[str, object]:
        """What goes into the connector's capabilities: ``loaded`` and ``load_seconds``."""
        return {"loaded": list(self.loaded(service)), "load_seconds": self.load_seconds(service)}
