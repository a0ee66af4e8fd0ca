"""The single writer: applies received events to the store in batches.

The collector's receive loop only appends to this writer's in-memory queue, so a slow disk
never slows the receiver down (Redis drops a pub/sub consumer that falls behind). The writer
takes whatever has arrived (up to ``max_batch``), coalesces what can be coalesced (many
progress reports of one job, many heartbeats of one worker → the latest one), applies the
rest in one transaction (its jobs and workers loaded up front in one query each, see
:meth:`monitor.store.Tx.prefetch`), and wakes websocket streams. It also runs the time-based truth
(offline workers, lost jobs, stale connectors) and pruning, and the operator's writes (a
worker's drain flag, ``POST /api/workers/<name>/drain``) through :meth:`Writer.call`, and the
audit trail of those requests (:meth:`Writer.audit`), so nothing else writes.

With several monitors on one PostgreSQL store (:mod:`monitor.ingest.standby`) only the writer
of the lease's holder writes; a standby's writer keeps what arrives in a bounded buffer and
applies it when its monitor takes over (every write transaction is fenced by the lease's term).

The one exception: a web app built without a writer (``create_app(writer=None)``: a process
that serves the API but collects no events, as tests build it) records the drain flag itself
through :meth:`monitor.store.Store.set_draining`. That process has no writer to race with,
and the flag is the operator's choice, not derived from events, so no merge rule is bypassed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from jobqueue.errors import LeaseLost, MalformedEvent
from jobqueue.shared.masking import DEFAULT_PATTERN, mask_event
from jobqueue.shared.names import TASK_PROGRESS, WORKER_HEARTBEAT
from monitor.ingest.hub import ChangeHub
from monitor.ingest.memory import release_freed_memory
from monitor.merge.apply import apply, expire, valid_progress
from monitor.store import Store, Tx
from monitor.store.access import add_audit

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Queue items that are not events: ``(_MARKER, done)`` (see :meth:`Writer.wait_idle`),
#: ``(_CALL, fn, done, box)`` (see :meth:`Writer.call`) and ``(_AUDIT, entry)`` (see
#: :meth:`Writer.audit`).
_MARKER, _CALL, _AUDIT = "__marker__", "__call__", "__audit__"


#: Events (raw messages) one write transaction takes at most. A writer behind its stream takes
#: this many at once: each job and worker a transaction touches is loaded, written and
#: serialised into the change log once per transaction, so a job whose events straddle two
#: transactions costs that twice. At 12,000 events/s beside Flower and a bare receiver
#: (``bench.ingest``), 20,000 instead of 5,000 wrote a fifth fewer change rows and cut the
#: monitor's CPU per event by ~7 % and its drain after the burst by ~20 % (docs/benchmarks.md
#: §19); the batch's decoded events (~1 KB each) are the memory it costs.
MAX_BATCH = 20_000

#: A backlog (queued items) after which, once the queue is empty again, the writer gives the
#: freed memory back to the system (:func:`monitor.ingest.memory.release_freed_memory`).
RELEASE_AFTER_BACKLOG = 20_000


def _is_control(item: Any, kind: str | None = None) -> bool:
    return isinstance(item, tuple) and bool(item) and item[0] in ((kind,) if kind else (_MARKER, _CALL, _AUDIT))


#: Kinds of event where only the latest one of a key matters inside a batch.
_COALESCE = {TASK_PROGRESS: "uuid", WORKER_HEARTBEAT: "hostname"}


def coalesce(events: list[Any]) -> list[Any]:
    """Drop progress reports and heartbeats that a later one of the same job/worker, with
    nothing else about that job/worker in between, makes redundant."""
    out: list[Any] = []
    last_at: dict[tuple[str, str], int] = {}
    for ev in events:
        kind = ev.get("type") if isinstance(ev, dict) else None
        field = _COALESCE.get(kind) if isinstance(kind, str) else None
        key_value = ev.get(field) if field else None
        if field and isinstance(kind, str) and isinstance(key_value, str) \
                and (kind != TASK_PROGRESS or valid_progress(ev)) \
                and isinstance(ev.get("timestamp"), (int, float)):
            key = (kind, key_value)
            index = last_at.get(key)
            if index is not None:
                previous = out[index]
                if kind != TASK_PROGRESS or _progress_key(ev) >= _progress_key(previous):
                    out[index] = ev
                continue
            last_at[key] = len(out)
            out.append(ev)
            continue
        if isinstance(ev, dict):
            # Anything else about this job/worker ends its coalescing window.
            for f in ("uuid", "hostname"):
                if isinstance(ev.get(f), str):
                    last_at.pop((TASK_PROGRESS, ev[f]), None)
                    last_at.pop((WORKER_HEARTBEAT, ev[f]), None)
        out.append(ev)
    return out


def _drain(q: queue.Queue[Any], limit: int) -> list[Any]:
    """Up to ``limit`` items off ``q`` at once, in order: ``get_nowait`` per item, without its
    lock and wake-up per item (about a microsecond each, for every event of a busy stream)."""
    with q.mutex:
        items = q.queue  # the Queue's deque, guarded by its mutex
        n = min(limit, len(items))
        if n <= 0:
            return []
        pop = items.popleft
        taken = [pop() for _ in range(n)]
        q.not_full.notify_all()  # what get() does per item: senders waiting for room go on
    return taken


def referenced(events: list[Any]) -> tuple[set[str], set[str]]:
    """The job ids and worker names a batch refers to (to load them in one query each)."""
    jobs: set[str] = set()
    workers: set[str] = set()
    for ev in events:
        if not isinstance(ev, dict):
            continue
        uuid = ev.get("uuid")
        if isinstance(uuid, str):
            jobs.add(uuid)
        for field in ("hostname", "worker"):
            name = ev.get(field)
            if isinstance(name, str):
                workers.add(name)
    return jobs, workers


def _progress_key(ev: dict[str, Any]) -> tuple[float, float, float]:
    def num(v: Any) -> float:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else -1.0

    return (num(ev.get("attempt")), num(ev.get("percent")), num(ev.get("step")))


class Writer:
    """Owns every write to the store; a thread with :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        hub: ChangeHub,
        *,
        heartbeat_default: float = 2.0,
        beat_default: float = 15.0,
        max_batch: int = MAX_BATCH,
        max_queue: int = 500_000,
        expire_interval: float = 0.5,
        min_interval: float = 0.03,
        prune_interval: float = 60.0,
        on_changes: Callable[[list[tuple[int, str, str, Any]]], None] | None = None,
        totals: Any = None,
        secret_keys: str = DEFAULT_PATTERN,
        leadership: Any = None,
        standby_buffer: int = 100_000,
        on_promoted: Callable[[], Any] | None = None,
    ) -> None:
        """``totals``: a :class:`monitor.metrics.totals.Totals` that counts, in each write
        transaction, what it did (the Prometheus counters); None counts nothing.
        ``secret_keys``: every event is masked with this pattern before it is applied
        (:func:`jobqueue.shared.masking.mask_event`), so nothing the store shows holds a secret.
        ``leadership``: a :class:`monitor.ingest.standby.Leadership` (None: this monitor always
        writes); while it is not :attr:`~monitor.ingest.standby.Leadership.leading` this writer
        is a standby: it keeps the newest ``standby_buffer`` events and audit entries instead of
        writing, applies them when it leads, then calls ``on_promoted`` (the monitor's repair).
        ``min_interval``: a busy writer starts a transaction at most this often (seconds,
        ``JOBQUEUE_MONITOR_WRITE_INTERVAL``); an idle one applies what arrives at once (see :meth:`_take`)."""
        self.store = store
        self.secret_keys = secret_keys
        self.hub = hub
        self.heartbeat_default = heartbeat_default
        self.beat_default = beat_default
        self.max_batch = max_batch
        self.expire_interval = expire_interval
        self.min_interval = min_interval
        self._last_take = 0.0
        self.prune_interval = prune_interval
        self.on_changes = on_changes
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts: Counter[str] = Counter()
        self.last_error: str | None = None
        self._calls: list[tuple[Callable[[], Any], threading.Event]] = []
        self._calls_lock = threading.Lock()
        #: Turns a raw broker message (``bytes`` put on the queue) into events, in this thread
        #: (see :meth:`decode_raw_with`).
        self._raw_decoder: Callable[[bytes], list[Any]] | None = None
        self.totals = totals
        self.leadership = leadership
        self.on_promoted = on_promoted
        self._buffer: deque[Any] = deque(maxlen=max(1, standby_buffer))
        self._standby = leadership is not None
        #: The largest backlog seen since the queue was last empty.
        self._peak_backlog = 0

    # -- feeding ---------------------------------------------------------------------------
    def decode_raw_with(self, decoder: Callable[[bytes], list[Any]]) -> None:
        """Decode the raw broker messages (``bytes``) put on the queue with ``decoder``, in the
        writer's thread. A collector reading the stream raw (:mod:`monitor.ingest.raw_reader`)
        passes its decoder here before it starts: decoding leaves the reader's thread."""
        self._raw_decoder = decoder

    def put(self, event: Any) -> bool:
        """Queue one event (or raw message); never blocks (a full queue drops, counts and
        returns False)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.counts["dropped"] += 1
            return False
        return True

    def audit(self, entry: dict[str, Any]) -> bool:
        """Queue one audit entry (see :mod:`monitor.web.audit`); written in this writer's
        thread, in a transaction of its own, before the events taken with it."""
        return self.put((_AUDIT, entry))

    def count(self, what: str, n: int = 1) -> None:
        """Count something seen outside the writer (e.g. undecodable messages)."""
        self.counts[what] += n

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is applied (for start-up repair and tests)."""
        done = threading.Event()
        self.put((_MARKER, done))
        return done.wait(timeout)

    def call(self, fn: Callable[[Tx], _T], timeout: float = 10.0) -> _T:
        """Run ``fn(tx)`` in the writer's thread, in a write transaction of its own, after the
        batch it arrives with; return its result (or raise what it raised). Raises
        :class:`TimeoutError` when the writer did not run it within ``timeout``."""
        done = threading.Event()
        box: dict[str, Any] = {}
        try:
            self._queue.put((_CALL, fn, done, box), timeout=timeout)
        except queue.Full:
            raise TimeoutError("the monitor's writer is too busy to take a write") from None
        if not done.wait(timeout):
            raise TimeoutError("the monitor's writer did not run the write in time")
        if "error" in box:
            raise box["error"]
        result: _T = box["result"]
        return result

    def _run_call(self, fn: Callable[[Tx], Any], done: threading.Event, box: dict[str, Any]) -> None:
        try:
            with self._tx() as tx:
                box["result"] = fn(tx)
            self._announce(tx.changes)
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    # -- thread ----------------------------------------------------------------------------
    def start(self) -> Writer:
        self.hub.publish(self.store.seq())
        self._thread = threading.Thread(target=self._run, name="monitor-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._queue.put(None) if not self._queue.full() else None
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def standing_by(self) -> bool:
        """True while this writer is a standby's (it buffers instead of writing)."""
        return self._standby

    @property
    def buffered(self) -> int:
        """Events (and audit entries) a standby holds for when it leads."""
        return len(self._buffer)

    def _leading(self) -> bool:
        return self.leadership is None or bool(self.leadership.leading)

    def _stand_by(self, batch: list[Any]) -> None:
        """A standby's batch: events and audit entries kept (the oldest dropped when the buffer
        is full), writes refused with :class:`LeaseLost`, markers answered."""
        self._standby = True
        for item in batch:
            if item is None:
                continue
            if _is_control(item, _MARKER):
                item[1].set()
            elif _is_control(item, _CALL):
                item[3]["error"] = LeaseLost("this monitor is a standby: the leader writes (try again there)")
                item[2].set()
            else:
                if len(self._buffer) == self._buffer.maxlen:
                    self.counts["standby_dropped"] += 1
                self._buffer.append(item)

    def _promote(self) -> None:
        """This monitor now leads: apply what the standby buffered, then let repair fill the rest."""
        self._standby = False
        self.hub.publish(self.store.seq())
        buffered = list(self._buffer)
        self._buffer.clear()
        log.info("this monitor leads: applying %d buffered events", len(buffered))
        audits = [item[1] for item in buffered if _is_control(item, _AUDIT)]
        events = self._decode_raw([item for item in buffered if not _is_control(item)])
        if audits:
            self._write(lambda tx: add_audit(tx.session, audits))
        for start in range(0, len(events), self.max_batch):
            self._apply_batch(events[start:start + self.max_batch])
        if self.on_promoted is not None:
            self.on_promoted()

    def _run(self) -> None:
        next_expire = next_prune = 0.0
        while not self._stop.is_set():
            batch = self._take()
            if not self._leading():
                self._stand_by(batch)
                continue
            if self._standby:
                try:
                    self._promote()
                except LeaseLost:
                    self._stand_by(batch)
                    continue
            markers = [ev[1] for ev in batch if _is_control(ev, _MARKER)]
            calls = [ev[1:] for ev in batch if _is_control(ev, _CALL)]
            audits = [ev[1] for ev in batch if _is_control(ev, _AUDIT)]
            events = [ev for ev in batch if not _is_control(ev) and ev is not None]
            events = self._decode_raw(events)
            try:
                if audits:
                    self._write(lambda tx, entries=audits: add_audit(tx.session, entries))  # type: ignore[misc]
                if events:
                    self._apply_batch(events)
                now = time.monotonic()
                if now >= next_expire:
                    next_expire = now + self.expire_interval
                    self._write(lambda tx: expire(tx, default_freq=self.heartbeat_default, default_beat=self.beat_default))
                if now >= next_prune:
                    next_prune = now + self.prune_interval
                    pruned = self.store.prune()
                    self.counts["pruned"] += pruned
                    self.hub.publish(self.store.seq())
            except LeaseLost as exc:  # another monitor took over: this one stands by
                log.warning("monitor writer: %s", exc)
                self._stand_by([(_AUDIT, entry) for entry in audits] + events)
            except Exception as exc:  # the writer must survive a bad moment of the database
                self.counts["errors"] += 1
                self.last_error = repr(exc)
                log.exception("monitor writer error")
                self._stop.wait(0.5)
            for fn, called, box in calls:
                self._run_call(fn, called, box)
            for done in markers:
                done.set()

    def _decode_raw(self, items: list[Any]) -> list[Any]:
        """Raw messages replaced by their events (the decoder counts what does not decode)."""
        decode = self._raw_decoder
        if decode is None:
            return items
        out: list[Any] = []
        for item in items:
            if type(item) is bytes:
                out.extend(decode(item))
            else:
                out.append(item)
        return out

    def _take(self) -> list[Any]:
        backlog = self._queue.qsize()
        self._peak_backlog = max(self._peak_backlog, backlog)
        if not backlog and self._peak_backlog >= RELEASE_AFTER_BACKLOG:
            self._peak_backlog = 0
            release_freed_memory()  # the burst is applied: its memory goes back
        try:
            first = self._queue.get(timeout=self.expire_interval)
        except queue.Empty:
            return []
        # A busy writer (its last batch taken less than min_interval ago) lets the rest of the
        # interval fill the batch: each transaction costs the same fixed work (commit, change
        # log, totals, service medians) however few events it holds, so a steady trickle of
        # jobs paid it per event. An idle writer never waits: a lone event is applied at once.
        now = time.monotonic()
        wait = self._last_take + self.min_interval - now
        if wait > 0:
            self._stop.wait(wait)
            now = time.monotonic()
        self._last_take = now
        return [first, *_drain(self._queue, self.max_batch - 1)]

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        """A store write transaction whose totals (if any) commit with it."""
        totals = self.totals
        try:
            with self.store.write() as tx:
                yield tx
                if totals is not None:
                    totals.record(tx)
        except BaseException:
            if totals is not None:
                totals.rolled_back()
            raise
        if totals is not None:
            totals.committed()

    def _write(self, fn: Callable[[Any], Any]) -> None:
        with self._tx() as tx:
            fn(tx)
        self._announce(tx.changes)

    def _announce(self, changes: list[tuple[int, str, str, Any]]) -> None:
        if changes:
            self.hub.publish(changes[-1][0])
            if self.on_changes is not None:
                self.on_changes(changes)

    def _apply_batch(self, events: list[Any]) -> None:
        self.counts["received"] += len(events)
        if self.totals is not None:
            self.totals.count_events(events)
        merged = coalesce(events)
        self.counts["coalesced"] += len(events) - len(merged)
        try:
            with self._tx() as tx:
                tx.prefetch(*referenced(merged), plain_jobs=True)
                for ev in merged:
                    self._apply_one(ev, tx)
            self._announce(tx.changes)
            return
        except LeaseLost:
            raise
        except Exception as exc:
            self.last_error = repr(exc)
            log.warning("batch failed (%r); applying its events one by one", exc)
        for ev in merged:
            try:
                with self._tx() as tx:
                    self._apply_one(ev, tx)
                self._announce(tx.changes)
            except LeaseLost:
                raise
            except Exception as exc:
                self.counts["errors"] += 1
                self.last_error = repr(exc)

    def _apply_one(self, ev: Any, tx: Any) -> None:
        try:
            if apply(mask_event(ev, self.secret_keys), tx):
                self.counts["applied"] += 1
            else:
                self.counts["unchanged"] += 1
        except MalformedEvent as exc:
            self.counts["malformed"] += 1
            self.last_error = str(exc)[:300]
