"""Truth repair: reconcile the store with the live cluster and the result backend.

Events are lossy (a monitor that was down missed some; Redis drops a slow subscriber), so at
start-up and then periodically the monitor asks:

* the result backend (``result_extended`` keeps name, kwargs, worker, retries and queue): every
  ``celery-task-meta-*`` key gives a job's last state, so jobs that ended while the monitor was
  down — or before it ever existed — are rebuilt;
* the broker's queue lists: jobs still waiting that the monitor never saw sent;
* ``inspect()``: which workers answer (ping), what they run (active) and hold (reserved), and
  our ``connector_status`` command (identity + every connector's status).

Every finding becomes a synthetic event (``"source": "repair"``) queued to the same writer and
merged by the same :func:`monitor.merge.apply.apply`, so repair can only move things forward.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from jobqueue.client.services import service_names
from jobqueue.config import Settings
from jobqueue.shared import job_record as job_facts
from jobqueue.shared.names import (
    CONNECTOR_STATUS,
    CONTROL_CONNECTOR_STATUS,
    TASK_RECEIVED,
    TASK_SENT,
    TASK_STARTED,
    WORKER_HEARTBEAT,
)
from jobqueue.shared.records import facts_key
from jobqueue.states import JobStatus
from jobqueue.transport.internals import global_keyprefix, redis_queue_keys, result_key_prefix
from jobqueue.transport.redis_urls import is_redis_url
from monitor.ingest.writer import Writer
from monitor.merge.truth import DEMOTE_GRACE, JOB_EXPIRED, JOB_TRUTH
from monitor.repair import queries as repair_store
from monitor.repair.rebuild import job_events, meta_of, queue_message_event, ts_of
from monitor.store import FINAL_STATUSES, Store

log = logging.getLogger(__name__)


#: How far back (s) the first pass looks for final jobs nobody knows.
FINAL_LOOKBACK = 3600.0
#: Most queued messages one repair pass reads (per pass, over all queues).
MAX_QUEUE_SCAN = 500_000


#: Seconds before a failed repair pass is tried again (at most the repair interval).
RETRY_AFTER_FAILURE = 5.0


class Repair:
    """Runs :meth:`run_once` at start-up and every ``interval`` seconds; a thread with stop()."""

    def __init__(self, celery_app: Any, writer: Writer, store: Store, settings: Settings, *,
                 interval: float | None = None, inspect_timeout: float = 1.0) -> None:
        self.app = celery_app
        self.writer = writer
        self.store = store
        self.settings = settings
        self.interval = settings.monitor_repair_interval if interval is None else interval
        self.inspect_timeout = inspect_timeout
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last: dict[str, Any] = {}
        self.last_error: str | None = None
        #: Final jobs changed before this time were verified against the backend.
        self._verified_until = 0.0
        #: Final jobs changed before this time were checked for being known to anyone.
        self._expiry_checked_until: float | None = None

    def start(self) -> Repair:
        self._thread = threading.Thread(target=self._run, name="monitor-repair", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def trigger(self) -> None:
        """Run a pass now (e.g. the event stream was lost and is back: its gap is unknown)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval
            if self.writer.standing_by:  # a standby's monitor: the leader repairs
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                self.run_once()
            except Exception as exc:  # a broker hiccup must not end repair for good
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("truth repair failed: %s", exc)
                wait = min(self.interval, RETRY_AFTER_FAILURE)
            self._wake.wait(wait)
            self._wake.clear()

    # -- one pass --------------------------------------------------------------------------
    def run_once(self) -> dict[str, Any]:
        """One full reconciliation; returns counts of what it found."""
        started = time.time()
        known: set[str] = set()
        backend, backend_ids, complete = self._from_backend(started)
        queued, queue_ids, queues_complete = self._from_queues()
        known |= backend_ids | queue_ids
        summary: dict[str, Any] = {"backend": backend, "queues": queued}
        self._demote_queued(queue_ids - backend_ids, started)
        self.writer.wait_idle(30.0)
        if not self._stop.is_set():
            workers, job_ids = self._from_workers()
            known |= job_ids
            summary.update(workers)
            self.writer.wait_idle(30.0)
        if complete and queues_complete and not self._stop.is_set():
            summary["expired"] = self._expire_unknown(known, started)
            self.writer.wait_idle(30.0)
        if complete:
            self._verified_until = started
        summary["seconds"] = round(time.time() - started, 3)
        self.runs += 1
        self.last = summary
        return summary

    def _put(self, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for event in events:
            self.writer.put(event)
            n += 1
        return n

    def _redis(self, url: str) -> Any:
        from jobqueue.transport.redis_clients import redis_client

        return redis_client(url, self.settings, socket_timeout=5, socket_connect_timeout=3)

    def _from_backend(self, now: float) -> tuple[int, set[str], bool]:
        """Rebuild and verify jobs from the result backend: every job the store does not hold
        or holds unfinished, and every final job changed since the last pass (its final state
        may have come from an event; the backend is the authority). Returns (events queued,
        ids the backend knows, whether the backend could be listed)."""
        backend = self.settings.result_backend
        if not is_redis_url(backend):
            return 0, set(), False
        client = self._redis(backend)
        meta_prefix = result_key_prefix(self.app)
        count = 0
        try:
            meta_ids = {k.decode(errors="replace")[len(meta_prefix):]
                        for k in client.scan_iter(match=meta_prefix + "*", count=1000)}
            fact_ids = {k.decode(errors="replace")[len(facts_key("")):]
                        for k in client.scan_iter(match=facts_key("*"), count=1000)}
            ids = sorted(meta_ids | fact_ids)
            stored = repair_store.job_states(self.store, ids)
            # Final jobs changed since the last pass, and those a grace period before it (a
            # final state the backend contradicts is taken back only once it is that old).
            changed = repair_store.changed_final_ids(self.store, self._verified_until - DEMOTE_GRACE - self.interval)
            todo = [i for i in ids if i not in stored or stored[i][0] not in FINAL_STATUSES or i in changed]
            for start in range(0, len(todo), 500):
                chunk = todo[start:start + 500]
                metas = client.mget([meta_prefix + i for i in chunk])
                facts = job_facts.read_many(client, [i for i in chunk if i in fact_ids])
                for job_id, raw in zip(chunk, metas, strict=True):
                    meta = _json(raw)
                    if meta is None and job_id not in facts:
                        continue
                    open_ = job_id not in stored or stored[job_id][0] not in FINAL_STATUSES
                    count += self._put(job_events(job_id, meta, facts.get(job_id, {}), now, lifecycle=open_))
        finally:
            client.close()
        return count, meta_ids | fact_ids, True

    def _from_queues(self) -> tuple[int, set[str], bool]:
        """Jobs waiting in the broker's queue lists (Redis): (events queued, their ids,
        whether every queue was read whole)."""
        if not self.settings.is_redis:
            return 0, set(), False
        queues = sorted(set(self.store.known_queues()) | set(service_names()))
        client = self._redis(self.settings.broker_url)
        now = time.time()
        count = 0
        ids: set[str] = set()
        read = 0
        complete = True
        try:
            for queue in queues:
                for key in redis_queue_keys(queue, prefix=global_keyprefix(self.app.conf.broker_transport_options)):
                    offset = 0
                    while True:
                        if read >= MAX_QUEUE_SCAN:
                            complete = False
                            break
                        page = client.lrange(key, offset, offset + 999)
                        read += len(page)
                        for raw in page:
                            event = queue_message_event(raw, queue, now)
                            if event is not None:
                                ids.add(event["uuid"])
                                count += self._put([event])
                        if len(page) < 1000:
                            break
                        offset += 1000
        finally:
            client.close()
        return count, ids, complete

    def _demote_queued(self, queue_only: set[str], now: float) -> None:
        """A job still waiting in a queue, with no backend record, is queued whatever an
        event claimed (a forged final state is taken back)."""
        if not queue_only:
            return
        stored = repair_store.job_states(self.store, sorted(queue_only))
        for job_id, (status, _) in stored.items():
            if status in FINAL_STATUSES:
                self.writer.put({"type": JOB_TRUTH, "uuid": job_id, "source": "repair", "timestamp": now,
                                 "local_received": now, "status": JobStatus.QUEUED.value, "fields": {}})

    def _expire_unknown(self, known: set[str], started: float) -> int:
        """Forget jobs that neither the backend, a queue nor a worker knows, once nothing
        happened to them for ``monitor_unknown_job_expiry`` seconds (ids of forged events, or
        of messages lost with a flushed broker)."""
        before = started - self.settings.monitor_unknown_job_expiry
        if self._expiry_checked_until is None:
            # A final job is checked once, soon after it changed; on start-up the last hour's
            # (older ones may be past the backend's own result expiry, not forged).
            self._expiry_checked_until = before - FINAL_LOOKBACK
        if before <= self._expiry_checked_until:
            return 0
        candidates = repair_store.expiry_candidates(self.store, self._expiry_checked_until, before)
        self._expiry_checked_until = before
        gone = [job_id for job_id, _ in candidates if job_id not in known]
        for start in range(0, len(gone), 500):
            self.writer.put({"type": JOB_EXPIRED, "uuids": gone[start:start + 500], "source": "repair",
                             "timestamp": started, "local_received": started})
        return len(gone)

    def _from_workers(self) -> tuple[dict[str, int], set[str]]:
        now = time.time()
        timeout = self.inspect_timeout
        pings = _merge(self.app.control.ping(timeout=timeout))
        names = sorted(pings)
        if not names:
            return {"workers": 0}, set()
        events: list[dict[str, Any]] = []
        for name in names:
            events.append({"type": WORKER_HEARTBEAT, "hostname": name, "timestamp": now,
                           "local_received": now, "source": "repair"})
        inspect = self.app.control.inspect(destination=names, timeout=timeout, limit=len(names))
        statuses = _merge(self.app.control.broadcast(CONTROL_CONNECTOR_STATUS, destination=names, reply=True,
                                                     timeout=timeout, limit=len(names)))
        for name, reply in statuses.items():
            if not isinstance(reply, dict) or not isinstance(reply.get("connectors"), dict):
                continue
            for service, status in reply["connectors"].items():
                if not isinstance(status, dict):
                    continue
                events.append({
                    "type": CONNECTOR_STATUS, "hostname": name, "worker": reply.get("worker") or name,
                    "machine_id": reply.get("machine_id"), "gpu": reply.get("gpu"), "service": service,
                    "status": status.get("status"), "message": status.get("message"), "seq": status.get("seq"),
                    "details": status.get("details"), "connectors": reply.get("connectors") and list(reply["connectors"]),
                    "queues": reply.get("queues"), "interval": self.settings.status_beat,
                    "timestamp": now, "local_received": now, "source": "repair",
                })
        for name, tasks in (inspect.reserved() or {}).items():
            for task in tasks or []:
                events.extend(self._task_events(name, task, now, started=False))
        for name, tasks in (inspect.active() or {}).items():
            for task in tasks or []:
                events.extend(self._task_events(name, task, now, started=True))
        job_ids = {ev["uuid"] for ev in events if isinstance(ev.get("uuid"), str)}
        self._put(events)
        return {"workers": len(names), "connectors": len(statuses)}, job_ids

    @staticmethod
    def _task_events(worker: str, task: Any, now: float, *, started: bool) -> list[dict[str, Any]]:
        if not isinstance(task, dict) or not isinstance(task.get("id"), str):
            return []
        meta = meta_of(task.get("kwargs"))
        queue = (task.get("delivery_info") or {}).get("routing_key")
        base = {"uuid": task["id"], "hostname": worker, "source": "repair", "local_received": now}
        events = [{**base, "type": TASK_SENT, "name": task.get("name"), "queue": queue,
                   "kwargs": json.dumps(meta, default=str), "timestamp": ts_of(meta.get("submitted_at")) or now}]
        events.append({**base, "type": TASK_RECEIVED, "timestamp": now, "kwargs": json.dumps(meta, default=str)})
        if started:
            events.append({**base, "type": TASK_STARTED, "timestamp": ts_of(task.get("time_start")) or now})
        return events


def _json(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _merge(replies: Any) -> dict[str, Any]:
    """Celery's list of ``{node: reply}`` dicts as one dict."""
    out: dict[str, Any] = {}
    for reply in replies or []:
        if isinstance(reply, dict):
            out.update(reply)
    return out
