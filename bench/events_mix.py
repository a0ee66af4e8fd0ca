"""A realistic event stream for the ingestion benchmark, as pre-encoded Redis pub/sub messages.

50 workers (``gpu<N>@vm<M>``) each run one job after another; their jobs interleave the way
concurrent jobs do. One job is: ``task-sent``, ``task-received``, ``connector-status``
(active), ``task-started``, ``task-progress`` × ``progress_steps``, ``task-succeeded``,
``connector-status`` (idle). Every worker also sends a ``worker-heartbeat`` every 2 s of
planned time. ``mix="plain"`` puts a plain Celery app's tasks, with their args and kwargs,
in place of the jobs (:mod:`bench.events_plain`). Event timestamps are the planned send times, so a consumer sees plausible ages.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery.utils.time import utcoffset

from bench.common import encode_event, event_channel
from bench.events_plain import plain_job_factory
from jobqueue.shared.names import CONNECTOR_STATUS, RUN_JOB_TASK, TASK_PROGRESS

#: The event mixes :func:`build_stream` makes.
MIXES = ("jobqueue", "plain")
#: Heartbeat interval of the simulated workers (s).
HEARTBEAT_SECONDS = 2.0


@dataclass
class EncodedStream:
    """Messages ready to publish: ``(channel, body)`` pairs, and what they contain."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    #: Events by type.
    by_type: dict[str, int] = field(default_factory=dict)
    #: Job ids in the stream.
    jobs: int = 0

    @property
    def task_events(self) -> int:
        return sum(n for kind, n in self.by_type.items() if kind.startswith("task-"))


def _worker_names(workers: int) -> list[str]:
    return [f"gpu{i % 4}@benchvm{i // 4:02d}" for i in range(workers)]


def _job_events(worker: str, seq: int, progress_steps: int) -> Iterator[dict[str, Any]]:
    job_id = str(uuid.uuid4())
    meta = {"service": "simulation", "priority": 5, "queue": "simulation", "workflow_id": None,
            "step": None, "timeout": None, "submitted_at": None}
    kwargs = json.dumps(meta)
    yield {"type": "task-sent", "uuid": job_id, "name": RUN_JOB_TASK, "args": "()", "kwargs": kwargs,
           "retries": 0, "eta": None, "expires": None, "queue": "simulation", "exchange": "",
           "routing_key": "simulation", "root_id": job_id, "parent_id": None, "hostname": "client@bench"}
    yield {"type": "task-received", "uuid": job_id, "name": RUN_JOB_TASK, "args": "()", "kwargs": kwargs,
           "root_id": job_id, "parent_id": None, "retries": 0, "eta": None, "expires": None,
           "hostname": worker}
    yield _connector(worker, "active", seq * 2)
    yield {"type": "task-started", "uuid": job_id, "hostname": worker}
    for step in range(1, progress_steps + 1):
        yield {"type": TASK_PROGRESS, "uuid": job_id, "service": "simulation",
               "percent": round(100.0 * step / progress_steps, 1), "step": step,
               "total_steps": progress_steps, "message": f"step {step}/{progress_steps}", "node": None,
               "eta_seconds": 0.1 * (progress_steps - step), "attempt": 0, "hostname": worker}
    result = {"job_id": job_id, "service": "simulation", "worker": worker, "attempt": 0, "output": None}
    yield {"type": "task-succeeded", "uuid": job_id, "result": repr(result), "runtime": 1.0,
           "hostname": worker}
    yield _connector(worker, "idle", seq * 2 + 1)


def _connector(worker: str, status: str, seq: int) -> dict[str, Any]:
    gpu = int(worker.split("@")[0].removeprefix("gpu"))
    return {"type": CONNECTOR_STATUS, "worker": worker, "machine_id": worker.split("@")[1], "gpu": gpu,
            "service": "simulation", "status": status, "message": "", "seq": seq,
            "details": {"kind": "simulation", "gpu": gpu}, "connectors": ["simulation"],
            "queues": [f"gpu{gpu}", "simulation"], "beat": False, "interval": 15.0, "hostname": worker}


def _heartbeat(worker: str, processed: int) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": worker, "freq": HEARTBEAT_SECONDS,
            "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "active": 1,
            "processed": processed, "loadavg": [0.5, 0.4, 0.3]}


def build_stream(total: int, rate: float, t0: float, *, db: int, workers: int = 50,
                 progress_steps: int = 10, mix: str = "jobqueue") -> EncodedStream:
    """Encode ``total`` events planned at ``rate`` events/s from time ``t0``: jobqueue jobs
    (``mix="jobqueue"``) or a plain Celery app's tasks with their args (``"plain"``, see
    :mod:`bench.events_plain`)."""
    if mix not in MIXES:
        raise ValueError(f"unknown event mix {mix!r}, one of {MIXES}")
    make_job = _job_events if mix == "jobqueue" else plain_job_factory()
    names = _worker_names(workers)
    jobs: list[Iterator[dict[str, Any]]] = [iter(()) for _ in names]
    seqs = [0] * workers
    heartbeat_every = max(1, round(rate * HEARTBEAT_SECONDS / workers))
    stream = EncodedStream()
    pid = os.getpid()
    offset = utcoffset()
    clock = 0
    turn = 0
    while len(stream.messages) < total:
        i = len(stream.messages)
        if i % heartbeat_every == 0:
            worker = names[(i // heartbeat_every) % workers]
            event = _heartbeat(worker, seqs[names.index(worker)])
        else:
            w = turn % workers
            turn += 1
            upcoming: dict[str, Any] | None = next(jobs[w], None)
            if upcoming is None:
                seqs[w] += 1
                stream.jobs += 1
                jobs[w] = make_job(names[w], seqs[w], progress_steps)
                upcoming = next(jobs[w])
            event = upcoming
        clock += 1
        event.update(timestamp=t0 + i / rate, clock=clock, utcoffset=offset, pid=pid)
        stream.messages.append((event_channel(db, event["type"]), encode_event(event)))
        stream.by_type[event["type"]] = stream.by_type.get(event["type"], 0) + 1
    return stream
