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
merged by the same :func:`monitor.apply.apply`, so repair can only move things forward.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from jobqueue.config import Settings
from jobqueue.connectors import CONNECTORS
from jobqueue.events import CONNECTOR_STATUS, CONTROL_CONNECTOR_STATUS, job_meta_from_kwargs
from jobqueue.routing import redis_queue_keys
from jobqueue.summary import summarize_payload
from monitor.store import Store
from monitor.writer import Writer

log = logging.getLogger(__name__)

#: Result backend key prefix (Celery's key-value backends).
META_PREFIX = "celery-task-meta-"


def _ts(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _meta_of(kwargs: Any) -> dict[str, Any]:
    """Job metadata from a task's real kwargs (``{"service", "payload", "options"}``) or repr."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("options"), dict):
        service = kwargs.get("service", kwargs["options"].get("service"))
        meta = {**kwargs["options"], "service": service}
        summary = summarize_payload(service, kwargs.get("payload"))
        if summary is not None and "payload_summary" not in meta:
            meta["payload_summary"] = summary
        return meta
    return job_meta_from_kwargs(kwargs)


def _error_of(result: Any) -> dict[str, Any]:
    if isinstance(result, dict) and "exc_type" in result:
        args = result.get("exc_message")
        args = args if isinstance(args, (list, tuple)) else [args]
        message = str(args[0]) if args else ""
        details = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        return {"type": result.get("exc_type"), "message": message, "details": details}
    return {"type": None, "message": "" if result is None else str(result), "details": {}}


def events_from_backend_meta(meta: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Synthetic events that bring a job to the state its backend record shows."""
    job_id = meta.get("task_id")
    status = meta.get("status")
    if not isinstance(job_id, str) or not isinstance(status, str):
        return []
    done = _ts(meta.get("date_done")) or now
    job_meta = _meta_of(meta.get("kwargs"))
    submitted = _ts(job_meta.get("submitted_at")) or done
    worker = meta.get("worker") if isinstance(meta.get("worker"), str) else None
    retries = meta.get("retries") if isinstance(meta.get("retries"), int) else 0
    base = {"uuid": job_id, "source": "repair", "local_received": now}
    events: list[dict[str, Any]] = [{
        **base, "type": "task-sent", "timestamp": submitted, "name": meta.get("name"),
        "kwargs": json.dumps(job_meta, default=str), "queue": meta.get("queue"),
    }]
    if worker:
        events.append({**base, "type": "task-received", "timestamp": min(submitted, done), "hostname": worker,
                       "retries": retries, "kwargs": json.dumps(job_meta, default=str)})
    result = meta.get("result")
    final = {**base, "timestamp": done, "hostname": worker}
    if status == "SUCCESS":
        runtime = result.get("duration") if isinstance(result, dict) else None
        events.append({**final, "type": "task-succeeded", "result": result, "runtime": runtime})
    elif status == "FAILURE":
        events.append({**final, "type": "task-failed", "error": _error_of(result)})
    elif status == "REVOKED":
        events.append({**final, "type": "task-revoked"})
    elif status == "RETRY":
        events.append({**final, "type": "task-retried", "error": _error_of(result)})
    elif status in ("STARTED", "PROGRESS") and worker:
        events.append({**final, "type": "task-started"})
        if status == "PROGRESS" and isinstance(result, dict):
            events.append({**final, **{k: result.get(k) for k in (
                "percent", "step", "total_steps", "message", "node", "eta_seconds", "attempt")},
                "type": "task-progress"})
    return events


def events_from_queue_message(raw: bytes | str, queue: str, now: float) -> dict[str, Any] | None:
    """A synthetic ``task-sent`` for one message waiting in a broker queue list."""
    try:
        message = json.loads(raw)
        headers = message["headers"]
        job_id = headers["id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(job_id, str):
        return None
    meta = job_meta_from_kwargs(headers.get("kwargsrepr"))
    return {"type": "task-sent", "uuid": job_id, "name": headers.get("task"), "source": "repair",
            "kwargs": json.dumps(meta, default=str) if meta else None, "queue": queue,
            "timestamp": _ts(meta.get("submitted_at")) or now, "local_received": now}


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
        summary: dict[str, Any] = {"backend": self._from_backend(), "queues": self._from_queues()}
        self.writer.wait_idle(30.0)
        if not self._stop.is_set():
            summary.update(self._from_workers())
            self.writer.wait_idle(30.0)
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
        import redis

        return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)

    def _from_backend(self) -> int:
        backend = self.settings.result_backend
        if not backend.startswith(("redis://", "rediss://", "redis+socket://")):
            return 0
        client = self._redis(backend)
        now = time.time()
        count = 0
        try:
            keys = [k for k in client.scan_iter(match=META_PREFIX + "*", count=1000)]
            ids = [k.decode(errors="replace")[len(META_PREFIX):] for k in keys]
            known_final = self.store.final_job_ids(ids)
            todo = [k for k, i in zip(keys, ids, strict=True) if i not in known_final]
            for start in range(0, len(todo), 500):
                for raw in client.mget(todo[start:start + 500]):
                    if raw is None:
                        continue
                    try:
                        meta = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(meta, dict):
                        count += self._put(events_from_backend_meta(meta, now))
        finally:
            client.close()
        return count

    def _from_queues(self) -> int:
        if not self.settings.is_redis:
            return 0
        queues = sorted(set(self.store.known_queues()) | set(CONNECTORS))
        client = self._redis(self.settings.broker_url)
        now = time.time()
        count = 0
        try:
            for queue in queues:
                for key in redis_queue_keys(queue):
                    for raw in client.lrange(key, 0, 10_000):
                        event = events_from_queue_message(raw, queue, now)
                        if event is not None:
                            count += self._put([event])
        finally:
            client.close()
        return count

    def _from_workers(self) -> dict[str, int]:
        now = time.time()
        timeout = self.inspect_timeout
        pings = _merge(self.app.control.ping(timeout=timeout))
        names = sorted(pings)
        if not names:
            return {"workers": 0}
        events: list[dict[str, Any]] = []
        for name in names:
            events.append({"type": "worker-heartbeat", "hostname": name, "timestamp": now,
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
        self._put(events)
        return {"workers": len(names), "connectors": len(statuses)}

    @staticmethod
    def _task_events(worker: str, task: Any, now: float, *, started: bool) -> list[dict[str, Any]]:
        if not isinstance(task, dict) or not isinstance(task.get("id"), str):
            return []
        meta = _meta_of(task.get("kwargs"))
        queue = (task.get("delivery_info") or {}).get("routing_key")
        base = {"uuid": task["id"], "hostname": worker, "source": "repair", "local_received": now}
        events = [{**base, "type": "task-sent", "name": task.get("name"), "queue": queue,
                   "kwargs": json.dumps(meta, default=str), "timestamp": _ts(meta.get("submitted_at")) or now}]
        events.append({**base, "type": "task-received", "timestamp": now, "kwargs": json.dumps(meta, default=str)})
        if started:
            events.append({**base, "type": "task-started", "timestamp": _ts(task.get("time_start")) or now})
        return events


def _merge(replies: Any) -> dict[str, Any]:
    """Celery's list of ``{node: reply}`` dicts as one dict."""
    out: dict[str, Any] = {}
    for reply in replies or []:
        if isinstance(reply, dict):
            out.update(reply)
    return out
