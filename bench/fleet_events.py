"""A big fleet made of replayed worker events: what N workers on N/4 machines send a monitor.

Each worker sends ``worker-online``, then ``worker-heartbeat`` and ``connector-status`` (with
capabilities: models, VRAM, tags) as a real one does; statuses, services and tags vary so the
fleet page's sort and filter have something to tell apart. Used by ``bench/dashboards.py`` and
the fleet table's Chromium test.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bench.common import encode_event, event_channel
from jobqueue.shared.names import CONNECTOR_STATUS

#: Connector statuses cycled over the workers (a fleet at work, with a few in trouble).
STATUSES = ("idle", "active", "idle", "active", "error", "waiting_for_service", "idle", "starting")
#: Services cycled over the workers.
SERVICES = ("simulation", "comfyui")
#: Tags cycled over the workers.
TAGS = (["region:eu", "tier:a"], ["region:us"], ["region:eu"], ["region:us", "tier:b"])


def worker_name(n: int) -> str:
    """The ``n``-th replayed worker: four GPUs a machine."""
    return f"gpu{n % 4}@fleet{n // 4:03d}"


def connector_status(n: int, now: float, seq: int = 1) -> dict[str, Any]:
    """The ``n``-th worker's connector report."""
    worker = worker_name(n)
    service = SERVICES[n % len(SERVICES)]
    status = STATUSES[n % len(STATUSES)]
    caps = {"models": {"checkpoints": [f"model-{n % 5}.safetensors"]}, "vram_total_gb": 24.0,
            "vram_free_gb": 20.0 - n % 7, "tags": TAGS[n % len(TAGS)]}
    return {"type": CONNECTOR_STATUS, "worker": worker, "machine_id": worker.split("@")[1], "gpu": n % 4,
            "service": service, "status": status, "message": "service down" if status == "error" else "",
            "seq": seq, "details": {"capabilities": caps}, "connectors": [service],
            "queues": [f"gpu{n % 4}", service], "beat": seq > 1, "interval": 15.0, "hostname": worker,
            "timestamp": now}


def heartbeat(n: int, now: float, freq: float, kind: str = "worker-heartbeat") -> dict[str, Any]:
    """The ``n``-th worker's heartbeat (or ``worker-online``) every ``freq`` seconds."""
    return {"type": kind, "hostname": worker_name(n), "freq": freq, "sw_ver": "5.7.0", "timestamp": now,
            "active": 0, "processed": n, "loadavg": [0.1, 0.1, 0.1], "pid": 1000 + n}


def publish(client: redis.Redis, db: int, events: list[dict[str, Any]]) -> None:
    """Put ``events`` on the Celery event stream of database ``db``, in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.publish(event_channel(db, str(event["type"])), encode_event(event))
    pipe.execute()


def announce(client: redis.Redis, db: int, count: int, freq: float) -> None:
    """``count`` workers come online and report their connectors."""
    now = time.time()
    publish(client, db, [heartbeat(n, now, freq, "worker-online") for n in range(count)])
    publish(client, db, [connector_status(n, now) for n in range(count)])


def beat(client: redis.Redis, db: int, count: int, freq: float, round_: int, reports: bool = True) -> None:
    """One round of heartbeats of ``count`` workers, with their connector reports when ``reports``."""
    now = time.time()
    events = [heartbeat(n, now, freq) for n in range(count)]
    if reports:
        events += [connector_status(n, now, seq=round_ + 1) for n in range(count)]
    publish(client, db, events)
