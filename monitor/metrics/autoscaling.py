"""Autoscaling signals for ``/metrics``: what waits, for what, and how long the queue takes.

An autoscaler (KEDA's Prometheus scaler, a cloud autoscaler; docs/deployment.md) scales a GPU
pool on these gauges, per service and per capability (``model:<file>``, ``tag:<tag>``,
``vram:<GiB step>``: one label value per requirement a queued job has):

* ``jobqueue_service_queued_jobs{service}``: the queued-jobs index the queue caps count
  (:mod:`jobqueue.shared.queued`), read from Redis at scrape time, for every service with
  queued jobs or run times in the store, or a cap;
* ``jobqueue_capability_queued_jobs{service, capability}``: queued jobs needing that capability;
* ``jobqueue_capability_unmet_jobs{service, capability}``: queued jobs needing a capability
  no online worker has (the pool to scale up from zero), and
  ``jobqueue_service_unrunnable_jobs{service}``: queued jobs no online worker can run at all;
* ``jobqueue_service_drain_seconds{service}`` and
  ``jobqueue_capability_drain_seconds{service, capability}``: when the last of those queued
  jobs is expected to have run (the queue ETAs of :func:`monitor.web.eta.store_estimates`);
  left out when unknown (no median yet, or no online worker consumes the queue).

Pure functions over the store's dicts, so the tests read the same values as a scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from jobqueue.shared.requirements import Capabilities, Requirements, satisfies
from jobqueue.shared.routing import vram_step


def capability_labels(req: Requirements) -> list[tuple[str, Requirements]]:
    """Each single requirement of ``req`` as a label value, with it alone as requirements."""
    out = [(f"model:{m}", Requirements(models=(m,))) for m in req.models]
    out += [(f"tag:{t}", Requirements(tags=(t,))) for t in req.tags]
    if req.vram_gb is not None:
        out.append((f"vram:{vram_step(req.vram_gb) or req.vram_gb:g}", Requirements(vram_gb=req.vram_gb)))
    return out


def _met(req: Requirements, service: str, caps: list[Capabilities]) -> bool:
    return any(c.service == service and satisfies(req, c) for c in caps)


def signals(queued_jobs: Iterable[Mapping[str, Any]], eta: Mapping[str, float | None],
            caps: list[Capabilities]) -> dict[str, dict[tuple[str, ...], float]]:
    """The gauges' samples by metric suffix: ``{"capability_queued": {(service, capability): n}, ...}``.

    ``queued_jobs``: the store's queued jobs (``service``, ``requires``); ``eta``: their
    ``eta_seconds`` by id; ``caps``: the capabilities of the workers online
    (:func:`monitor.web.fleet_capabilities.online_capabilities`)."""
    out: dict[str, dict[tuple[str, ...], float]] = {
        "capability_queued": {}, "capability_unmet": {}, "capability_drain": {}, "unrunnable": {}, "drain": {}}

    def add(kind: str, key: tuple[str, ...], value: float = 1.0) -> None:
        out[kind][key] = out[kind].get(key, 0.0) + value

    for job in queued_jobs:
        service = str(job.get("service") or "")
        req = Requirements.from_dict(job.get("requires"))
        wait = eta.get(str(job.get("id")))
        out["unrunnable"].setdefault((service,), 0.0)
        runnable = req.is_empty or _met(req, service, caps)
        if not runnable:
            add("unrunnable", (service,))
            wait = None  # it waits for a worker that does not exist: no drain time
        if wait is not None:
            out["drain"][(service,)] = max(out["drain"].get((service,), 0.0), float(wait))
        for label, alone in capability_labels(req):
            key = (service, label)
            add("capability_queued", key)
            out["capability_unmet"].setdefault(key, 0.0)
            if not _met(alone, service, caps):
                add("capability_unmet", key)
            if wait is not None:
                out["capability_drain"][key] = max(out["capability_drain"].get(key, 0.0), float(wait))
    return out


#: (metric name, help, label names, key in :func:`signals`).
FAMILIES = (
    ("jobqueue_capability_queued_jobs", "Queued jobs needing a capability", ("service", "capability"),
     "capability_queued"),
    ("jobqueue_capability_unmet_jobs", "Queued jobs needing a capability no online worker has",
     ("service", "capability"), "capability_unmet"),
    ("jobqueue_capability_drain_seconds", "Seconds until the last queued job needing a capability is "
     "expected to have run", ("service", "capability"), "capability_drain"),
    ("jobqueue_service_unrunnable_jobs", "Queued jobs no online worker can run", ("service",), "unrunnable"),
    ("jobqueue_service_drain_seconds", "Seconds until a service's last queued job is expected to have run",
     ("service",), "drain"),
)


def families(queued_counts: Mapping[str, int], samples: dict[str, dict[tuple[str, ...], float]]) -> Iterator[Any]:
    """The autoscaling gauges from the queued-jobs index counts and :func:`signals`."""
    queued = GaugeMetricFamily("jobqueue_service_queued_jobs",
                               "Jobs waiting for a worker, per service (the count queue caps apply to)",
                               labels=["service"])
    for service, count in sorted(queued_counts.items()):
        queued.add_metric([service], count)
    yield queued
    for name, help_text, labels, kind in FAMILIES:
        family = GaugeMetricFamily(name, help_text, labels=list(labels))
        for key, value in sorted(samples[kind].items()):
            family.add_metric(list(key), value)
        yield family
