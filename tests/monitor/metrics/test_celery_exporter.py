"""celery-exporter's metrics beside ours: the same names, types and labels, so the Grafana
dashboards and alerts of its celery-mixin (copied into tests/data/celery-mixin) work unchanged,
counted from the events of any Celery app and persisted like ours."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import create_app
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.metrics import celery_exporter
from monitor.metrics.totals import Totals
from monitor.store import Store
from tests.helpers import wait_for
from tests.monitor import plain_app
from tests.monitor.metrics.test_metrics import scrape

plain_worker = plain_app.plain_worker

MIXIN = Path(__file__).resolve().parents[2] / "data" / "celery-mixin"
T0 = 1_700_000_000.0
#: Labels a Prometheus server adds itself (target labels), not the exporter.
TARGET_LABELS = {"cluster", "namespace", "job", "instance", "le"}


def value(samples: dict[str, Any], metric: str, **labels: str) -> float:
    """A sample's value (0 when absent); ``name_`` stands for the ``name`` label."""
    if "name_" in labels:
        labels["name"] = labels.pop("name_")
    return samples.get(metric, {}).get(tuple(sorted(labels.items())), 0.0)


def foreign_events(uuid: str, name: str, t: float, end: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one task of a plain Celery app (no jobqueue options), sent from a client."""
    return [
        {"type": "task-sent", "uuid": uuid, "name": name, "queue": "celery", "hostname": "gen41@client-1",
         "timestamp": t, "args": "(1, 2)", "kwargs": "{}"},
        {"type": "task-received", "uuid": uuid, "name": name, "hostname": "celery@box-a", "timestamp": t + 0.5},
        {"type": "task-started", "uuid": uuid, "hostname": "celery@box-a", "timestamp": t + 2.0},
        {**end, "uuid": uuid, "hostname": "celery@box-a", "timestamp": t + 2.3},
    ]


@pytest.fixture
def fed(tmp_path: Path, redis_url: str) -> Iterator[tuple[Writer, Any, Store]]:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}", keep_seconds=10 * 365 * 86400.0)
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    app = create_app({"monitor_db": store.url, "broker_url": redis_url}, store=store, writer=writer)
    yield writer, app.test_client(), store
    writer.stop()


def test_a_hostname_is_the_part_after_the_at_and_an_exception_its_class_name():
    assert celery_exporter.hostname_of("celery@gpu-3") == "gpu-3"
    assert celery_exporter.hostname_of("gpu-3") == "gpu-3"
    assert celery_exporter.hostname_of(None) == ""
    assert celery_exporter.exception_of("ValueError('boom')") == "ValueError"
    assert celery_exporter.exception_of("boom") == "UnknownException"
    assert celery_exporter.exception_of(7) == "UnknownException"


def test_each_task_events_series_key_is_the_sorted_one_the_totals_store():
    # Given a job and one event of every type the exporter counts (a failure, a runtime, a queue wait)
    class Job:
        name, queue, submitted_at, meta = "tasks.add", "gpu", 100.0, None

    events = [{"type": kind, "uuid": "u", "hostname": "celery@gpu-3", "timestamp": 101.5, "runtime": 0.3,
               "exception": "ValueError('x')"} for kind in celery_exporter.COUNTERS]
    delta: dict[Any, float] = {}
    for ev in events:
        celery_exporter.event_deltas(ev, Job(), delta, set())
    # Then every key's labels are in sorted order (the form the stored totals are keyed by), the
    # runtime and queue-wait buckets carry their le, and a failure its exception
    assert delta and all(labels == tuple(sorted(labels)) for _, labels in delta)
    task = (("hostname", "gpu-3"), ("name", "tasks.add"), ("queue_name", "gpu"))
    assert delta[("celery_task_failed", (("exception", "ValueError"), *task))] == 1
    assert delta[("celery_task_runtime_bucket", (task[0], ("le", "0.5"), *task[1:]))] == 1
    assert delta[("celery_task_queue_wait_time_bucket", (task[0], ("le", "2.5"), *task[1:]))] == 1
    assert delta[("celery_task_succeeded", task)] == 1 and delta[("celery_task_runtime_sum", task)] == 0.3


def test_task_events_of_any_celery_app_are_counted_with_name_hostname_and_queue(fed):
    writer, client, _ = fed
    # Given two tasks of a plain Celery app: one succeeds in 0.3 s, one fails with ValueError
    for ev in foreign_events("t1", "tasks.add", T0, {"type": "task-succeeded", "runtime": 0.3, "result": "3"}):
        writer.put(ev)
    for ev in foreign_events("t2", "tasks.boom", T0 + 10, {"type": "task-failed", "exception": "ValueError('no')"}):
        writer.put(ev)
    writer.put({"type": "task-retried", "uuid": "t2", "hostname": "celery@box-a", "timestamp": T0 + 13,
                "exception": "ValueError('no')"})
    assert writer.wait_idle(10)
    samples = scrape(client.get("/metrics").get_data(as_text=True))
    add = {"name_": "tasks.add", "hostname": "box-a", "queue_name": "celery"}
    # Then each event type is counted under celery-exporter's names and labels
    assert value(samples, "celery_task_sent_total", name_="tasks.add", hostname="client-1", queue_name="celery") == 1
    assert value(samples, "celery_task_received_total", **add) == 1
    assert value(samples, "celery_task_started_total", **add) == 1
    assert value(samples, "celery_task_succeeded_total", **add) == 1
    assert value(samples, "celery_task_failed_total", name_="tasks.boom", hostname="box-a", queue_name="celery",
                 exception="ValueError") == 1
    assert value(samples, "celery_task_retried_total", name_="tasks.boom", hostname="box-a", queue_name="celery") == 1
    # And the runtime and the queue wait (sent → started: 2 s) are observed in the exporter's buckets
    assert value(samples, "celery_task_runtime_count", **add) == 1
    assert value(samples, "celery_task_runtime_bucket", **add, le="0.25") == 0
    assert value(samples, "celery_task_runtime_bucket", **add, le="0.5") == 1
    assert value(samples, "celery_task_runtime_sum", **add) == pytest.approx(0.3)
    assert value(samples, "celery_task_queue_wait_time_bucket", **add, le="1.0") == 0
    assert value(samples, "celery_task_queue_wait_time_bucket", **add, le="2.5") == 1


def test_the_exporters_counters_survive_a_monitor_restart_on_the_same_store(tmp_path, redis_url):
    # Given a monitor that counted one succeeded task, then stopped
    store = Store(f"sqlite:///{tmp_path / 'm.db'}", keep_seconds=10 * 365 * 86400.0)
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    for ev in foreign_events("t1", "tasks.add", T0, {"type": "task-succeeded", "runtime": 0.1}):
        writer.put(ev)
    assert writer.wait_idle(10)
    writer.stop()
    # When a new monitor on the same store counts one more
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    client = create_app({"monitor_db": store.url, "broker_url": redis_url}, store=store, writer=writer).test_client()
    try:
        for ev in foreign_events("t2", "tasks.add", T0 + 5, {"type": "task-succeeded", "runtime": 0.1}):
            writer.put(ev)
        assert writer.wait_idle(10)
        samples = scrape(client.get("/metrics").get_data(as_text=True))
    finally:
        writer.stop()
    # Then the counter went on from where it was, never back
    assert value(samples, "celery_task_succeeded_total", name_="tasks.add", hostname="box-a",
                 queue_name="celery") == 2


def test_forged_task_names_beyond_the_bound_are_counted_as_other(fed, monkeypatch):
    writer, client, _ = fed
    monkeypatch.setattr(celery_exporter, "MAX_TASK_NAMES", 3)
    # When events bring 10 distinct task names
    for n in range(10):
        writer.put({"type": "task-sent", "uuid": f"f{n}", "name": f"forged.{n}", "queue": "celery",
                    "hostname": "x@h", "timestamp": T0 + n})
    assert writer.wait_idle(10)
    samples = scrape(client.get("/metrics").get_data(as_text=True))
    names = {dict(labels)["name"] for labels in samples["celery_task_sent_total"]}
    # Then at most the bound of names are labelled, the rest counted as "other"
    assert len(names - {"other"}) == 3 and "other" in names
    assert sum(samples["celery_task_sent_total"].values()) == 10


# -- the celery-mixin's queries ---------------------------------------------------------------


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "query") and isinstance(item, str):
                yield item
            else:
                yield from _exprs(item)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def mixin_queries() -> list[str]:
    """Every PromQL expression of the mixin's dashboards, alerts and recording rules."""
    queries: list[str] = []
    for path in sorted(MIXIN.glob("*.json")):
        queries.extend(_exprs(json.loads(path.read_text())))
    for path in sorted(MIXIN.glob("*.yaml")):
        queries.extend(_exprs(yaml.safe_load(path.read_text())))
    return queries


def required(queries: list[str]) -> dict[str, set[str]]:
    """Metric family → the labels the queries select (=, =~), group or template on (target labels aside)."""
    needs: dict[str, set[str]] = {}
    for query in queries:
        families = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in re.findall(r"\bcelery_[a-z_]+", query)}
        # positive matchers need the label; a negative one (!=, !~) also matches a series without it
        labels = set(re.findall(r"(\w+)\s*(?:=~|=)\s*\"", query))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", query):
            labels |= {label.strip() for label in group.split(",") if label.strip()}
        labels |= set(re.findall(r"label_values\([^,]*,\s*(\w+)\)", query))
        for family in families:
            needs.setdefault(family, set()).update(labels - TARGET_LABELS)
    return needs


def test_the_mixin_queries_are_read_from_the_copied_dashboards_and_rules():
    needs = required(mixin_queries())
    # the copy holds what the mixin plots and alerts on (a broken copy or parser fails here)
    assert {"celery_task_succeeded", "celery_task_failed", "celery_task_runtime", "celery_worker_up",
            "celery_queue_length"} <= set(needs)
    assert {"name", "queue_name"} <= needs["celery_task_failed"]


def test_a_real_monitor_serves_every_series_and_label_the_mixin_uses_for_a_plain_celery_app(
        start_monitor, plain_worker):
    # Given our monitor and a plain Celery app's real worker on one broker
    monitor = start_monitor("m.db")
    plain = plain_worker
    # When the app runs a task that succeeds and one that fails
    assert plain.send_task("plain.add", args=(1, 2)).get(timeout=30) == 3
    failed = plain.send_task("plain.boom")
    with pytest.raises(ValueError):
        failed.get(timeout=30)

    def counted() -> str | None:
        text = monitor.get("/metrics").text
        samples = scrape(text)
        done = (value(samples, "celery_task_succeeded_total", name_="plain.add", hostname="box-p",
                      queue_name="celery") == 1
                and value(samples, "celery_task_failed_total", name_="plain.boom", hostname="box-p",
                          queue_name="celery", exception="ValueError") == 1
                and value(samples, "celery_worker_up", hostname="box-p") == 1)
        return text if done else None

    text = wait_for(counted, 30, what="the plain app's tasks counted under celery-exporter's names")
    # Then every family and label the mixin's dashboards, alerts and rules use is served
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served.setdefault(family.name, set()).update(sample.labels)
    for family, labels in required(mixin_queries()).items():
        assert family in served, f"{family} is not served"
        assert labels <= served[family] | {"le"}, (family, labels - served[family])


def test_the_stats_give_count_failure_rate_and_runtime_percentiles_per_task_name(fed):
    writer, client, _ = fed
    # Given a plain app's task that succeeded 3 times (0.1, 0.2, 0.9 s) and failed once, and another task
    for n, runtime in enumerate((0.1, 0.2, 0.9)):
        for ev in foreign_events(f"a{n}", "tasks.add", T0 + n * 10, {"type": "task-succeeded", "runtime": runtime}):
            writer.put(ev)
    for ev in foreign_events("a9", "tasks.add", T0 + 50, {"type": "task-failed", "exception": "ValueError('x')"}):
        writer.put(ev)
    for ev in foreign_events("b1", "tasks.other", T0 + 60, {"type": "task-succeeded", "runtime": 2.0}):
        writer.put(ev)
    assert writer.wait_idle(10)
    # When the stats are asked for
    tasks = client.get("/api/stats").get_json()["tasks"]
    # Then each task name has its count, failures, failure rate among ended runs and runtime p50/p95
    assert tasks["tasks.add"] == {"count": 4, "failed": 1, "failure_rate": 0.25, "p50": 0.2, "p95": 0.9, "samples": 3}
    assert tasks["tasks.other"]["count"] == 1 and tasks["tasks.other"]["p50"] == 2.0
