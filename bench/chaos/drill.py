"""What every chaos drill shares: a fleet of real worker processes, an observer that counts
executions from the event stream, the result-backend truth, and the one-line summary.

How executions are counted (the honest way we have): every attempt at a job starts with a
``task-started`` event from the worker that runs it, sent before the connector is called. The
observer keeps, per job, every ``task-started`` and ``task-succeeded`` it saw. A job that was
started on a worker that then died and started again elsewhere has 2 executions: one
*re-run* (work repeated because its worker died: expected, and the reason nothing is lost). A
job with more than one ``task-succeeded`` ran to the end twice: a *duplicate* (what must
not happen). An event delivered twice (same sender and clock: a publish retried after the
broker connection died before its confirm came) counts once. Events are lossy in general;
the observer runs in the drill's own process on a quiet broker, and the summary says how
many ``task-started`` events it saw, so a gap shows.
Whether a job finished is read from the result backend, never from events.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import states as celery_states

from bench.common import Process, wait_worker_ready, worker_process
from jobqueue.config import Settings
from jobqueue.up.procs import EventListener


class Fleet:
    """Real ``celery -A jobqueue worker -Q gpu<N>`` processes on one (simulated) machine."""

    def __init__(self, app: Any, settings: Settings, workdir: Path, size: int = 3, **env: str) -> None:
        self.app = app
        self.settings = settings
        self.workdir = workdir
        self.size = size
        self.env = env
        self.workers: dict[int, Process] = {}
        self._starts: dict[int, int] = defaultdict(int)

    def node_name(self, gpu: int) -> str:
        return f"gpu{gpu}@{self.settings.machine_id}"

    def start(self, gpu: int, wait: bool = True) -> Process:
        self._starts[gpu] += 1
        log = self.workdir / f"worker-gpu{gpu}-{self._starts[gpu]}.log"
        process = worker_process(self.settings, f"gpu{gpu}", log, **self.env).start()
        self.workers[gpu] = process
        if wait:
            wait_worker_ready(self.app, self.node_name(gpu), process)
        return process

    def start_all(self) -> None:
        for gpu in range(self.size):
            self.start(gpu, wait=False)
        for gpu in range(self.size):
            wait_worker_ready(self.app, self.node_name(gpu), self.workers[gpu])

    def kill(self, gpu: int, sig: int) -> None:
        self.workers[gpu].signal(sig)

    def random_gpu(self, rng: random.Random) -> int:
        return rng.randrange(self.size)

    def stop(self) -> None:
        for process in self.workers.values():
            process.stop()


@dataclass
class JobTrace:
    """What the observer saw of one job."""

    #: (event timestamp, hostname, Lamport clock) of each.
    started: list[tuple[float, str, Any]] = field(default_factory=list)
    succeeded: list[tuple[float, str, Any]] = field(default_factory=list)


class Observer:
    """A thread consuming the event stream (reconnecting when the broker goes away) that
    records every ``task-started`` / ``task-succeeded`` per job."""

    def __init__(self, app: Any) -> None:
        self.jobs: dict[str, JobTrace] = defaultdict(JobTrace)
        self.last_event_at = 0.0
        self._lock = threading.Lock()
        self._listener = EventListener(app, self._on_event, name="drill-observer")

    def start(self, timeout: float = 10.0) -> Observer:
        self._listener.start(timeout)
        return self

    def _on_event(self, event: dict[str, Any]) -> None:
        now = time.time()
        self.last_event_at = now
        kind = event.get("type")
        if kind not in ("task-started", "task-succeeded"):
            return
        # A copy of one event (same sender, same clock): a publish retried after its broker
        # connection died before the confirm came (RabbitMQ) is delivered twice; one execution.
        stamp = (float(event.get("timestamp") or now), event.get("hostname", ""), event.get("clock"))
        with self._lock:
            trace = self.jobs[event["uuid"]]
            seen = trace.started if kind == "task-started" else trace.succeeded
            if event.get("clock") is not None and any(s == stamp for s in seen):
                return
            seen.append(stamp)

    def running_on(self, hostname: str) -> list[str]:
        """Jobs whose last start was on ``hostname`` and that have not succeeded."""
        with self._lock:
            return [job for job, t in self.jobs.items()
                    if t.started and t.started[-1][1] == hostname and not t.succeeded]

    def counts(self) -> dict[str, int]:
        with self._lock:
            starts = sum(len(t.started) for t in self.jobs.values())
            reruns = sum(max(0, len(t.started) - 1) for t in self.jobs.values())
            duplicates = sum(max(0, len(t.succeeded) - 1) for t in self.jobs.values())
            started_jobs = sum(1 for t in self.jobs.values() if t.started)
        return {"starts_seen": starts, "started_jobs": started_jobs, "reruns": reruns, "duplicates": duplicates}

    def stop(self) -> None:
        self._listener.stop(5)


def backend_states(app: Any, job_ids: list[str]) -> dict[str, str]:
    """Celery state of every job, read from the result backend in one round trip."""
    backend = app.backend
    keys = [backend.get_key_for_task(job_id) for job_id in job_ids]
    values = backend.client.mget(keys) if keys else []
    states: dict[str, str] = {}
    for job_id, raw in zip(job_ids, values, strict=True):
        if raw is None:
            states[job_id] = celery_states.PENDING
        else:
            states[job_id] = backend.decode_result(raw)["status"]
    return states


def finished(app: Any, job_ids: list[str]) -> int:
    """How many of ``job_ids`` have succeeded (per the result backend)."""
    return sum(1 for state in backend_states(app, job_ids).values() if state == celery_states.SUCCESS)


def summary_line(drill: str, *, jobs: int, finished: int, duplicates: int, recover: float | None,
                 **extra: Any) -> str:
    """The one line every drill prints."""
    lost = jobs - finished
    recover_text = "n/a" if recover is None else f"{recover:.1f}s"
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    return (f"{drill}: jobs={jobs} finished={finished} lost={lost} duplicates={duplicates} "
            f"recover={recover_text} {tail}").rstrip()
