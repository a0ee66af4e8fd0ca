"""Prometheus metrics of the monitor, by Prometheus convention (one registry per app).

Counters and histograms come from the totals persisted in the store (:mod:`monitor.metrics.totals`):
they never go down, not when jobs are pruned, not when the monitor restarts. Gauges say what is
true now (queue depths from the broker, workers and connectors by status, jobs the store holds,
and the autoscaling signals of :mod:`monitor.metrics.autoscaling`).
``/metrics`` serves them through prometheus_client's own exposition (text format, or OpenMetrics
when the scraper asks for it). docs/api.md lists every metric; docs/grafana-dashboard.json is a
dashboard built on them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jobqueue.shared import queued
from jobqueue.shared.requirements import Capabilities
from monitor.metrics import autoscaling, celery_exporter
from monitor.metrics.totals import QUEUE_WAIT_BUCKETS, RUNTIME_BUCKETS, read_totals

log = logging.getLogger(__name__)

#: Reads the depth of each named queue on the broker: ``(celery app, queue names) -> {queue: n}``.
QueueDepths = Callable[[Any, list[str]], dict[str, int]]
#: Every queued job with its ``eta_seconds`` as of a time: ``(store, now) -> [job]``.
Estimates = Callable[[Any, float], list[dict[str, Any]]]
#: The capabilities of the workers that take jobs now: ``(the store's workers) -> [Capabilities]``.
OnlineCapabilities = Callable[[list[dict[str, Any]]], list[Capabilities]]


@dataclass(frozen=True)
class Sources:
    """What the metrics read beyond the store, passed in by the web layer that owns it:
    :func:`monitor.web.broker.queue_depths`, :func:`monitor.web.eta.store_estimates` and
    :func:`monitor.web.fleet_capabilities.online_capabilities`."""

    queue_depths: QueueDepths
    estimates: Estimates
    capabilities: OnlineCapabilities


#: Counters: (persisted total name, metric name without ``_total``, help, label names).
COUNTERS = (
    ("jobs", "jobqueue_jobs", "Jobs that reached a final status", ("service", "status", "name")),
    ("jobs_seen", "jobqueue_jobs_seen", "Jobs the monitor learned about", ("service", "name")),
    ("retries", "jobqueue_job_retries", "Job re-runs (retries and redeliveries)", ("service", "name")),
    ("events", "jobqueue_events", "Events received by the monitor, by type", ("type",)),
    ("webhook_deliveries", "jobqueue_webhook_deliveries", "Webhook deliveries, by outcome", ("status",)),
)
#: Histograms: (persisted name, metric name, help, bucket bounds).
HISTOGRAMS = (
    ("runtime", "jobqueue_job_runtime_seconds", "Runtime of completed jobs", RUNTIME_BUCKETS),
    ("queue_wait", "jobqueue_job_queue_wait_seconds", "Time from submission to a job's first start",
     QUEUE_WAIT_BUCKETS),
)


def _histogram(name: str, help_text: str, bounds: Sequence[float],
               totals: dict[str, list[tuple[dict[str, str], float]]], persisted: str) -> HistogramMetricFamily:
    """Cumulative buckets per service (and task name, for tasks without a service) from the
    persisted per-bucket counts."""
    family = HistogramMetricFamily(name, help_text, labels=["service", "name"])
    per_bucket: dict[tuple[str, str], dict[float, float]] = {}
    for labels, value in totals.get(f"{persisted}_bucket", []):
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        per_bucket.setdefault((labels["service"], labels.get("name", "")), {})[le] = value
    sums = {(labels["service"], labels.get("name", "")): value for labels, value in totals.get(f"{persisted}_sum", [])}
    for series in sorted(per_bucket):
        counts = per_bucket[series]
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in (*bounds, math.inf):
            running += counts.get(float(bound), 0.0)
            buckets.append(("+Inf" if bound == math.inf else str(float(bound)), running))
        family.add_metric(list(series), buckets, sums.get(series, 0.0))
    return family


def _without_empty_labels(family: Any) -> Any:
    """The family with empty label values left out of its samples (``name`` is set only on a
    task without a service: our own series keep the labels they always had)."""
    family.samples = [sample._replace(labels={k: v for k, v in sample.labels.items() if v != ""})
                      for sample in family.samples]
    return family


class MonitorCollector:
    """Collects every jobqueue metric at scrape time from the store, the collector, the broker
    and the result backend (``context`` is the app's :class:`monitor.app.MonitorContext`;
    ``sources`` reads the broker's queue lengths, the queue ETAs and the online capabilities)."""

    def __init__(self, context: Any, sources: Sources) -> None:
        self.context = context
        self.sources = sources

    def collect(self) -> Iterator[Any]:
        store = self.context.store
        totals = read_totals(store)
        for persisted, name, help_text, labels in COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=list(labels))
            for values, value in totals.get(persisted, []):
                family.add_metric([values.get(label, "") for label in labels], value)
            yield _without_empty_labels(family)
        for persisted, name, help_text, bounds in HISTOGRAMS:
            yield _without_empty_labels(_histogram(name, help_text, bounds, totals, persisted))
        yield from celery_exporter.task_families(totals)
        yield from self._gauges(store)
        collector = self.context.collector
        if collector is not None:
            stats = collector.stats()
            reconnects = CounterMetricFamily("jobqueue_monitor_stream_reconnects",
                                             "Times the monitor reconnected to the event stream (this process)")
            reconnects.add_metric([], stats["reconnects"])
            yield reconnects
            malformed = CounterMetricFamily("jobqueue_monitor_events_malformed",
                                            "Malformed events skipped (this process)")
            malformed.add_metric([], stats["malformed"])
            yield malformed
            connected = GaugeMetricFamily("jobqueue_monitor_stream_connected",
                                          "1 while the monitor consumes the event stream")
            connected.add_metric([], 1.0 if stats["connected"] else 0.0)
            yield connected
            if stats.get("last_heard") is not None:
                heard = GaugeMetricFamily("jobqueue_monitor_stream_last_heard_timestamp_seconds",
                                          "When the event stream was last heard from (Unix time)")
                heard.add_metric([], stats["last_heard"])
                yield heard
            backlog = GaugeMetricFamily("jobqueue_monitor_writer_backlog", "Events waiting for the writer")
            backlog.add_metric([], stats["backlog"])
            yield backlog

    def _gauges(self, store: Any) -> Iterator[Any]:
        stored = GaugeMetricFamily("jobqueue_jobs_stored", "Jobs the monitor's store holds now (falls when pruned)",
                                   labels=["service", "status"])
        for service, entry in store.stats()["services"].items():
            for status, count in entry["by_status"].items():
                stored.add_metric([service, status], count)
        yield stored
        workers = GaugeMetricFamily("jobqueue_workers", "Workers by status", labels=["status"])
        connectors = GaugeMetricFamily("jobqueue_connectors", "Connectors by service and status",
                                       labels=["service", "status", "stale"])
        by_status: dict[str, int] = {}
        by_conn: dict[tuple[str, str, str], int] = {}
        workers_list = store.workers()
        for worker in workers_list:
            by_status[worker["status"]] = by_status.get(worker["status"], 0) + 1
            for service, conn in worker["connectors"].items():
                key = (service, conn["status"], str(conn["stale"]).lower())
                by_conn[key] = by_conn.get(key, 0) + 1
        for status, count in sorted(by_status.items()):
            workers.add_metric([status], count)
        for key, count in sorted(by_conn.items()):
            connectors.add_metric(list(key), count)
        yield workers
        yield connectors
        depth = GaugeMetricFamily("jobqueue_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        depths: dict[str, int] = {}
        try:
            depths = self.sources.queue_depths(self.context.celery, store.known_queues())
        except Exception as exc:  # the broker is down: the other metrics still answer
            log.warning("queue depths unavailable: %r", exc)
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield depth
        yield from celery_exporter.worker_families(workers_list, depths)
        yield from self._autoscaling(store)
        seq = GaugeMetricFamily("jobqueue_monitor_seq", "The store's change sequence number")
        seq.add_metric([], store.seq())
        yield seq

    def _autoscaling(self, store: Any) -> Iterator[Any]:
        """Per service and capability: queued, unmet and drain time (:mod:`monitor.metrics.autoscaling`)."""
        celery = self.context.celery
        waiting = store.queued_requirements()
        services = ({j["service"] for j in waiting if j["service"]} | set(store.service_medians())
                    | set(celery.settings.max_queued_by_service))
        counts: dict[str, int] = {}
        try:
            counts = queued.counts(celery, sorted(services))
        except Exception as exc:  # the result backend is down: the store's signals still answer
            log.warning("queued-jobs counts unavailable: %r", exc)
        eta = {j["id"]: j.get("eta_seconds") for j in self.sources.estimates(store, time.time())}
        samples = autoscaling.signals(waiting, eta, self.sources.capabilities(store.workers()))
        yield from autoscaling.families(counts, samples)


def build_registry(context: Any, sources: Sources) -> CollectorRegistry:
    """A registry of this app's metrics (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(context, sources))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type, as prometheus_client encodes them for the
    ``Accept`` header (text format 0.0.4/1.0.0, or OpenMetrics when asked for)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
