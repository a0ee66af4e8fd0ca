"""celery-exporter's metrics, beside ours: the same names, types and labels as
danihodovic/celery-exporter, so the Grafana dashboards and alert rules built on it (its
celery-mixin) work against this monitor unchanged.

Counters ``celery_task_{sent,received,started,succeeded,failed,rejected,revoked,retried}_total``
``{name, hostname, queue_name}`` (failed also ``exception``) count task events as they arrive;
histograms ``celery_task_runtime`` (on ``task-succeeded``) and ``celery_task_queue_wait_time`` (on
``task-started``: from when the task was sent, or its ETA when later, to its start). Like ours,
they are persisted totals (:mod:`monitor.metrics.totals`) and never go down -- not when jobs are
pruned, not when the monitor restarts (celery-exporter's own reset with its process).

The labels are resolved the way the exporter resolves them: ``name`` and ``queue_name`` from the
task as the monitor knows it (its row after the event is applied: ``unknown`` / ``celery`` when the
monitor never learned them), ``hostname`` from the event's own hostname, the part after ``@``
(``celery@gpu-3`` → ``gpu-3``), ``exception`` the class name at the start of the event's
``exception`` text (``ValueError('x')`` → ``ValueError``; else ``UnknownException``).

Gauges at scrape time, from the store's workers and the broker's queue lengths:
``celery_worker_up{hostname}`` (1 online, 0 offline), ``celery_worker_tasks_active{hostname}``,
``celery_queue_length{queue_name}``, ``celery_active_worker_count{queue_name}`` and
``celery_active_consumer_count{queue_name}`` (online workers consuming the queue: each worker has
one consumer per queue) and ``celery_active_process_count{queue_name}`` (their pool processes:
Celery's heartbeats do not carry a pool's size, so each worker counts as one -- what a jobqueue
worker runs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from jobqueue.shared.names import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
)

#: Event type → counter name (without ``_total``), celery-exporter's ``state_counters``.
COUNTERS: dict[str, str] = {
    TASK_SENT: "celery_task_sent",
    TASK_RECEIVED: "celery_task_received",
    TASK_STARTED: "celery_task_started",
    TASK_SUCCEEDED: "celery_task_succeeded",
    TASK_FAILED: "celery_task_failed",
    TASK_REJECTED: "celery_task_rejected",
    TASK_REVOKED: "celery_task_revoked",
    TASK_RETRIED: "celery_task_retried",
}
#: The exporter's help texts (same words, so a dashboard's tooltips read the same).
HELP: dict[str, str] = {
    "celery_task_sent": "Sent when a task message is published.",
    "celery_task_received": "Sent when the worker receives a task.",
    "celery_task_started": "Sent just before the worker executes the task.",
    "celery_task_succeeded": "Sent if the task executed successfully.",
    "celery_task_failed": "Sent if the execution of the task failed.",
    "celery_task_rejected": "The task was rejected by the worker, possibly to be re-queued or moved to a dead "
                            "letter queue.",
    "celery_task_revoked": "Sent if the task has been revoked.",
    "celery_task_retried": "Sent if the task failed, but will be retried in the future.",
    "celery_task_runtime": "Histogram of task runtime measurements.",
    "celery_task_queue_wait_time": "Histogram of the time tasks spend waiting in the queue before being executed, "
                                   "excluding deliberate ETA/countdown delay.",
}
#: Labels of every task series.
TASK_LABELS = ("name", "hostname", "queue_name")
#: prometheus_client's default buckets, which celery-exporter's runtime histogram uses.
RUNTIME_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                      10.0)
#: celery-exporter's queue-wait buckets.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Most task names labelled (bounded series, whatever names forged events bring); then ``other``.
MAX_TASK_NAMES = 1000
#: Where a task's queue is not known: Celery's default queue, as the exporter assumes.
DEFAULT_QUEUE = "celery"
_EXCEPTION = re.compile(r"^(\w+)\(")
#: Worker statuses that count as up (a draining worker still heartbeats and runs its job).
UP_STATUSES = frozenset({"online", "draining"})

Key = tuple[str, tuple[tuple[str, str], ...]]


def hostname_of(node: object) -> str:
    """The host part of a Celery node name (``celery@gpu-3`` → ``gpu-3``), as the exporter labels it."""
    text = node if isinstance(node, str) else ""
    return text.partition("@")[2] if "@" in text else text


def exception_of(text: object) -> str:
    """The exception's class name at the start of a ``task-failed`` event's ``exception`` text."""
    match = _EXCEPTION.match(text) if isinstance(text, str) else None
    return match.group(1) if match else "UnknownException"


def _key(name: str, labels: Mapping[str, str]) -> Key:
    return name, tuple(sorted(labels.items()))


def _bucket(value: float, bounds: Sequence[float]) -> str:
    for bound in bounds:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


def _add(delta: dict[Key, float], key: Key, amount: float) -> None:
    delta[key] = delta.get(key, 0.0) + amount


def observe(delta: dict[Key, float], name: str, value: float, bounds: Sequence[float],
            labels: Mapping[str, str]) -> None:
    """Add one observation to a persisted histogram (non-cumulative bucket, sum, count)."""
    _add(delta, _key(f"{name}_bucket", {**labels, "le": _bucket(value, bounds)}), 1)
    _add(delta, _key(f"{name}_sum", labels), value)
    _add(delta, _key(f"{name}_count", labels), 1)


def known_names(keys: Iterable[Key]) -> set[str]:
    """The task names already labelled in persisted totals (for :data:`MAX_TASK_NAMES`)."""
    return {value for _, labels in keys for label, value in labels if label == "name"}


def task_name(job: Any, names: set[str]) -> str:
    """The task's name as a label: bounded in length, and in number (:data:`MAX_TASK_NAMES`;
    then ``other``); ``unknown`` when the monitor never learned it."""
    name = (getattr(job, "name", None) or "unknown")[:96]
    if name not in names:
        if len(names) >= MAX_TASK_NAMES:
            return "other"
        names.add(name)
    return name


def event_deltas(event: Mapping[str, Any], job: Any, delta: dict[Key, float], names: set[str]) -> None:
    """Add what one task event counts to ``delta``: its counter, and a runtime or queue-wait
    observation. ``job`` is the task's row after the event was applied (None: never learned);
    ``names`` the task names labelled so far (a new one past :data:`MAX_TASK_NAMES` is ``other``).

    The keys are built in their sorted label order (``exception`` < ``hostname`` < ``le`` <
    ``name`` < ``queue_name``), the same keys :func:`_key` gives, without sorting per event."""
    kind = event.get("type")
    counter = COUNTERS.get(kind) if isinstance(kind, str) else None
    if counter is None:
        return
    hostname = ("hostname", hostname_of(event.get("hostname"))[:64])
    rest = (("name", task_name(job, names)), ("queue_name", (getattr(job, "queue", None) or DEFAULT_QUEUE)[:64]))
    labels = (hostname, *rest)
    if kind == TASK_FAILED:
        _add(delta, (counter, (("exception", exception_of(event.get("exception"))[:64]), *labels)), 1)
    else:
        _add(delta, (counter, labels), 1)
    if kind != TASK_SENT:  # the exporter shows a worker's other counters at 0 (not task-sent's: many senders)
        for other_kind, other in COUNTERS.items():
            if other_kind not in (kind, TASK_SENT):
                key = (other, (("exception", ""), *labels) if other_kind == TASK_FAILED else labels)
                if key not in delta:
                    delta[key] = 0.0
    if kind == TASK_SUCCEEDED:
        runtime = event.get("runtime")
        if isinstance(runtime, (int, float)) and not isinstance(runtime, bool) and math.isfinite(runtime) \
                and runtime >= 0:
            _observe_sorted(delta, "celery_task_runtime", float(runtime), RUNTIME_BUCKETS, hostname, rest)
    elif kind == TASK_STARTED and job is not None:
        wait = _queue_wait(job, event.get("timestamp"))
        if wait is not None:
            _observe_sorted(delta, "celery_task_queue_wait_time", wait, QUEUE_WAIT_BUCKETS, hostname, rest)


def _observe_sorted(delta: dict[Key, float], name: str, value: float, bounds: Sequence[float],
                    hostname: tuple[str, str], rest: tuple[tuple[str, str], ...]) -> None:
    """:func:`observe` with the task labels given in sorted order (``le`` goes after ``hostname``)."""
    _add(delta, (f"{name}_bucket", (hostname, ("le", _bucket(value, bounds)), *rest)), 1)
    labels = (hostname, *rest)
    _add(delta, (f"{name}_sum", labels), value)
    _add(delta, (f"{name}_count", labels), 1)


def _queue_wait(job: Any, started: object) -> float | None:
    """From when the task was sent (or its ETA, when later) to this start; None when unknown."""
    sent = getattr(job, "submitted_at", None)
    if not isinstance(started, (int, float)) or not isinstance(sent, (int, float)):
        return None
    eta = (getattr(job, "meta", None) or {}).get("eta_at")
    baseline = max(sent, eta) if isinstance(eta, (int, float)) else sent
    wait = float(started) - float(baseline)
    return max(0.0, wait) if math.isfinite(wait) else None


# -- scrape -----------------------------------------------------------------------------------


def task_families(totals: Mapping[str, list[tuple[dict[str, str], float]]]) -> Iterator[Any]:
    """The counters and histograms from the persisted totals (always every family, empty or not,
    so a dashboard finds its series' names before the first task)."""
    for counter in COUNTERS.values():
        labels = [*TASK_LABELS, "exception"] if counter == "celery_task_failed" else list(TASK_LABELS)
        family = CounterMetricFamily(counter, HELP[counter], labels=labels)
        for values, value in totals.get(counter, []):
            family.add_metric([values.get(label, "") for label in labels], value)
        yield family
    yield _histogram("celery_task_runtime", RUNTIME_BUCKETS, totals)
    yield _histogram("celery_task_queue_wait_time", QUEUE_WAIT_BUCKETS, totals)


def _histogram(name: str, bounds: Sequence[float],
               totals: Mapping[str, list[tuple[dict[str, str], float]]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, HELP[name], labels=list(TASK_LABELS))
    per_series: dict[tuple[str, ...], dict[float, float]] = {}
    for labels, value in totals.get(f"{name}_bucket", []):
        series = tuple(labels.get(label, "") for label in TASK_LABELS)
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        per_series.setdefault(series, {})[le] = value
    sums = {tuple(labels.get(label, "") for label in TASK_LABELS): value
            for labels, value in totals.get(f"{name}_sum", [])}
    for series in sorted(per_series):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in (*bounds, math.inf):
            running += per_series[series].get(float(bound), 0.0)
            buckets.append(("+Inf" if bound == math.inf else str(float(bound)), running))
        family.add_metric(list(series), buckets, sums.get(series, 0.0))
    return family


def worker_families(workers: Iterable[Mapping[str, Any]], depths: Mapping[str, int]) -> Iterator[Any]:
    """The worker and queue gauges from the store's workers and the broker's queue lengths."""
    up = GaugeMetricFamily("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.",
                           labels=["hostname"])
    active = GaugeMetricFamily("celery_worker_tasks_active", "The number of tasks the worker is currently processing",
                               labels=["hostname"])
    skew = GaugeMetricFamily("jobqueue_worker_clock_skew_seconds",
                             "How far the worker's clock runs ahead (negative: behind), from its heartbeats.",
                             labels=["worker"])
    consumers: dict[str, int] = {}
    processes: dict[str, int] = {}
    for worker in workers:
        host = hostname_of(worker.get("name"))
        if isinstance(worker.get("clock_skew"), (int, float)):
            skew.add_metric([str(worker.get("name"))], float(worker["clock_skew"]))
        online = worker.get("status") in UP_STATUSES
        up.add_metric([host], 1.0 if online else 0.0)
        active.add_metric([host], float(worker.get("active") or 0) if online else 0.0)
        if not online:
            continue
        for queue in worker.get("queues") or []:
            if isinstance(queue, str):
                consumers[queue] = consumers.get(queue, 0) + 1
                processes[queue] = processes.get(queue, 0) + 1
    yield up
    yield active
    yield skew
    length = GaugeMetricFamily("celery_queue_length", "The number of message in broker queue.", labels=["queue_name"])
    for queue, count in sorted(depths.items()):
        length.add_metric([queue], float(count))
    yield length
    for name, help_text, counts in (
            ("celery_active_consumer_count", "The number of active consumer in broker queue.", consumers),
            ("celery_active_worker_count", "The number of active workers in broker queue.", consumers),
            ("celery_active_process_count", "The number of active processes in broker queue.", processes)):
        family = GaugeMetricFamily(name, help_text, labels=["queue_name"])
        for queue in sorted(set(counts) | set(depths)):
            family.add_metric([queue], float(counts.get(queue, 0)))
        yield family
