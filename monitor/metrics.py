"""Prometheus metrics, read from the store at scrape time (one registry per app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class StoreCollector:
    """Jobs by service and status, workers by status, connectors by status, collector counts."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def collect(self) -> Iterator[Any]:
        store = self.context.store
        stats = store.stats()
        jobs = GaugeMetricFamily("jobqueue_jobs", "Jobs in the monitor's store", labels=["service", "status"])
        for service, entry in stats["services"].items():
            for status, count in entry["by_status"].items():
                jobs.add_metric([service, status], count)
        yield jobs
        runtime = GaugeMetricFamily("jobqueue_job_runtime_seconds", "Completed job runtime statistics",
                                    labels=["service", "stat"])
        for service, entry in stats["services"].items():
            for stat in ("median", "mean", "min", "max", "p95"):
                if entry.get(stat) is not None:
                    runtime.add_metric([service, stat], entry[stat])
        yield runtime
        workers = GaugeMetricFamily("jobqueue_workers", "Workers by status", labels=["status"])
        connectors = GaugeMetricFamily("jobqueue_connectors", "Connectors by service and status",
                                       labels=["service", "status", "stale"])
        by_status: dict[str, int] = {}
        by_conn: dict[tuple[str, str, str], int] = {}
        for worker in store.workers():
            by_status[worker["status"]] = by_status.get(worker["status"], 0) + 1
            for service, conn in worker["connectors"].items():
                key = (service, conn["status"], str(conn["stale"]).lower())
                by_conn[key] = by_conn.get(key, 0) + 1
        for status, count in by_status.items():
            workers.add_metric([status], count)
        for key, count in by_conn.items():
            connectors.add_metric(list(key), count)
        yield workers
        yield connectors
        seq = GaugeMetricFamily("jobqueue_monitor_seq", "The store's change sequence number")
        seq.add_metric([], store.seq())
        yield seq
        collector = self.context.collector
        if collector is not None:
            events = CounterMetricFamily("jobqueue_monitor_events", "Events seen by the collector", labels=["kind"])
            stats_ = collector.stats()
            events.add_metric(["received"], stats_["received"])
            events.add_metric(["malformed"], stats_["malformed"])
            for kind, count in stats_["writer"].items():
                events.add_metric([f"writer_{kind}"], count)
            yield events


def build_registry(context: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(context))
    return registry
