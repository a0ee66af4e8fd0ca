"""/metrics by Prometheus convention: counters that never go down (not across a prune, not
across a restart), histograms of runtime and queue wait, gauges of what is true now.

Every scrape is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from jobqueue import submit_job
from monitor.app import create_app
from monitor.ingest.hub import ChangeHub
from monitor.ingest.writer import Writer
from monitor.metrics.totals import RUNTIME_BUCKETS, Totals
from monitor.store import Store
from tests.helpers import quick, wait_for

T0 = 1_700_000_000.0


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by sample name, then by sorted labels (prometheus_client's parser)."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def job_events(uuid: str, t: float, runtime: float, *, fail: bool = False) -> list[dict[str, Any]]:
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": t})
    end = ({"type": "task-failed", "exception": "ExecutionFailed('boom', {})"} if fail
           else {"type": "task-succeeded", "runtime": runtime})
    return [
        {"type": "task-sent", "uuid": uuid, "kwargs": meta, "timestamp": t},
        {"type": "task-started", "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": t + 4},
        {**end, "uuid": uuid, "hostname": "gpu0@vm1", "timestamp": t + 4 + runtime},
    ]


def test_counters_never_decrease_across_a_prune_and_runtimes_fill_histogram_buckets(tmp_path):
    # Given a monitor app on a store, fed through the real writer
    store = Store(f"sqlite:///{tmp_path / 'm.db'}", keep_seconds=10 * 365 * 86400.0)
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    app = create_app({"monitor_db": store.url, "broker_url": "redis://127.0.0.1:6379/14"}, store=store,
                     writer=writer)
    client = app.test_client()
    try:
        # When three jobs complete (runtimes 0.3 s, 7 s, 45 s) and one fails
        for n, runtime in enumerate((0.3, 7.0, 45.0)):
            for ev in job_events(f"ok{n}", T0 + n * 100, runtime):
                writer.put(ev)
        for ev in job_events("bad", T0 + 400, 1.0, fail=True):
            writer.put(ev)
        assert writer.wait_idle(10)
        response = client.get("/metrics")
        before = scrape(response.get_data(as_text=True))
        # Then the counters count them, by service and status
        assert value(before, "jobqueue_jobs_total", service="simulation", status="completed") == 3
        assert value(before, "jobqueue_jobs_total", service="simulation", status="failed") == 1
        assert value(before, "jobqueue_events_total", type="task-sent") == 4
        assert value(before, "jobqueue_jobs_stored", service="simulation", status="completed") == 3
        # And the runtime histogram has cumulative buckets suited to image jobs, sum and count
        buckets = before["jobqueue_job_runtime_seconds_bucket"]
        les = [dict(labels)["le"] for labels in buckets]
        assert len(les) == len(RUNTIME_BUCKETS) + 1 and "+Inf" in les
        assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="0.5") == 1
        assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="10.0") == 2
        assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="30.0") == 2
        assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="60.0") == 3
        assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="+Inf") == 3
        assert value(before, "jobqueue_job_runtime_seconds_count", service="simulation") == 3
        assert abs(value(before, "jobqueue_job_runtime_seconds_sum", service="simulation") - 52.3) < 1e-6
        # (every job waited 4 s in the queue)
        assert value(before, "jobqueue_job_queue_wait_seconds_bucket", service="simulation", le="2.0") == 0
        assert value(before, "jobqueue_job_queue_wait_seconds_bucket", service="simulation", le="5.0") == 4
        # And the content type is prometheus_client's own, with one charset
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        assert response.headers["Content-Type"].count("charset") == 1

        # When the store prunes all but one finished job
        store.keep_jobs = 1
        assert store.prune() == 3
        after = scrape(client.get("/metrics").get_data(as_text=True))
        # Then what the store holds fell, but no counter or histogram sample went down
        assert sum(after["jobqueue_jobs_stored"].values()) == 1
        for name in ("jobqueue_jobs_total", "jobqueue_events_total", "jobqueue_job_runtime_seconds_bucket",
                     "jobqueue_job_runtime_seconds_count", "jobqueue_job_queue_wait_seconds_count"):
            for labels, old in before[name].items():
                assert after[name][labels] >= old, (name, labels)
        # And a later job adds to them
        for ev in job_events("later", T0 + 900, 2.0):
            writer.put(ev)
        assert writer.wait_idle(10)
        later = scrape(client.get("/metrics").get_data(as_text=True))
        assert value(later, "jobqueue_jobs_total", service="simulation", status="completed") == 4
    finally:
        writer.stop()
        app.extensions["jobqueue_monitor"].close()
        store.close()


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(flask_app, client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_a_real_monitor_keeps_its_counters_across_a_prune_on_restart(start_worker, start_monitor, app):
    # Given a real monitor and a real worker that ran three jobs
    start_worker("gpu0")
    monitor = start_monitor("m.db")
    jobs = [submit_job("simulation", quick(f"j{n}"), app=app) for n in range(3)]
    for job in jobs:
        job.wait(timeout=60)

    def scraped() -> dict[str, Any]:
        return scrape(monitor.get("/metrics").text)

    # (the connector's idle report follows the job's completion in its own event: wait for both)
    before = wait_for(lambda: (s := scraped()) and value(s, "jobqueue_jobs_total", service="simulation",
                                                          status="completed") >= 3
                      and value(s, "jobqueue_connectors", service="simulation", status="idle", stale="false") >= 1
                      and s, 30, what="three completed jobs and an idle connector in /metrics")
    assert value(before, "jobqueue_job_runtime_seconds_count", service="simulation") == 3
    assert value(before, "jobqueue_job_runtime_seconds_bucket", service="simulation", le="+Inf") == 3
    assert value(before, "jobqueue_workers", status="online") == 1
    assert value(before, "jobqueue_connectors", service="simulation", status="idle", stale="false") == 1
    assert ("queue", "simulation") in {label for labels in before["jobqueue_queue_depth"] for label in labels}
    # When it restarts on the same store keeping only one finished job (it prunes at start)
    monitor.stop()
    monitor = start_monitor("m.db", monitor_keep_jobs="1")
    after = wait_for(lambda: (s := scraped()) and sum(s.get("jobqueue_jobs_stored", {}).values()) == 1 and s,
                     30, what="the restarted monitor to prune")
    # Then no counter went down
    for name in ("jobqueue_jobs_total", "jobqueue_events_total", "jobqueue_job_runtime_seconds_bucket"):
        for labels, old in before[name].items():
            assert after[name][labels] >= old, (name, labels)
    assert value(after, "jobqueue_jobs_total", service="simulation", status="completed") == 3


def test_a_job_run_again_counts_its_retries_in_the_retries_counter(tmp_path):
    # Given a monitor fed through its real writer
    store = Store(f"sqlite:///{tmp_path / 'm.db'}", keep_seconds=10 * 365 * 86400.0)
    writer = Writer(store, ChangeHub(), totals=Totals(store), prune_interval=3600.0).start()
    app = create_app({"monitor_db": store.url, "broker_url": "redis://127.0.0.1:6379/14"}, store=store,
                     writer=writer)
    try:
        # When a job reports attempt 0, then attempt 2 (run three times), and another runs once
        meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": T0})
        for n, (uuid, attempt) in enumerate((("again", 0), ("once", 0), ("again", 2))):
            if attempt == 0:
                writer.put({"type": "task-sent", "uuid": uuid, "kwargs": meta, "timestamp": T0})
            writer.put({"type": "task-progress", "uuid": uuid, "hostname": "gpu0@vm1", "percent": 10.0,
                        "step": 1, "total_steps": 10, "attempt": attempt, "timestamp": T0 + 1 + n})
            assert writer.wait_idle(10)  # each report in its own transaction, as they arrive apart
        # Then the retries counter says 2, for its service
        samples = scrape(app.test_client().get("/metrics").get_data(as_text=True))
        assert value(samples, "jobqueue_job_retries_total", service="simulation") == 2
    finally:
        writer.stop()
        app.extensions["jobqueue_monitor"].close()
        store.close()


def test_webhook_tries_are_counted_by_outcome_from_the_workers_events(start_worker, start_monitor, app):
    from jobqueue.transport.app import create_app as create_celery_app
    from tests.webhook_receiver import Receiver

    # Given a real monitor, a real worker and a receiver that answers 500 once, then 200
    receiver = Receiver(lambda n: 500 if n < 1 else 200).start()
    try:
        monitor = start_monitor("m.db")
        start_worker("gpu0", WEBHOOK_BACKOFF="0.2", WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
        # When a job with a webhook completes and its webhook is delivered on the second try
        # (the receiver listens on loopback: allowed on purpose, for the client and the worker)
        hooked = create_celery_app(app.settings.model_copy(update={"webhook_allowed_networks": ("127.0.0.1/32",)}))
        try:
            submit_job("simulation", quick("hooked"), webhook_url=receiver.url, app=hooked).wait(timeout=60)
        finally:
            hooked.close()
        wait_for(lambda: [r.answered for r in receiver.requests] == [500, 200], 30, what="two tries")
    finally:
        receiver.stop()
    # Then /metrics counts one try to retry and one delivered
    samples = wait_for(lambda: (s := scrape(monitor.get("/metrics").text))
                       and value(s, "jobqueue_webhook_deliveries_total", status="delivered") >= 1 and s,
                       30, what="the delivery counted")
    assert value(samples, "jobqueue_webhook_deliveries_total", status="delivered") == 1
    assert value(samples, "jobqueue_webhook_deliveries_total", status="retrying") == 1
    assert value(samples, "jobqueue_events_total", type="job-webhook") == 2


def test_every_metric_the_grafana_dashboard_plots_is_one_the_monitor_serves(start_monitor):
    # Given the dashboard JSON shipped in docs/ and the metric families a real monitor's /metrics declares
    monitor = start_monitor("m.db")
    dashboard = (Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json").read_text()
    exprs = [t["expr"] for panel in json.loads(dashboard)["panels"] for t in panel.get("targets", [])]
    plotted = {name for expr in exprs for name in re.findall(r"\bjobqueue_[a-z_]+", expr)}
    served = {family.name for family in text_string_to_metric_families(monitor.get("/metrics").text)}
    # Then every plotted series belongs to a served family (counters end in _total, histograms
    # in _bucket/_sum/_count)
    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|sum|count)$", "", name)

    assert plotted and {family(n) for n in plotted} <= served, {family(n) for n in plotted} - served


def test_autoscaling_gauges_give_queued_unmet_and_drain_time_per_service_and_capability(
        app, start_worker, start_monitor):
    # Given a monitor and one worker tagged region:eu, which has run one job (a median: 1 s)
    monitor = start_monitor()
    start_worker("gpu0", worker_tags="region:eu")
    submit_job("simulation", {"steps": 1, "step_seconds": 1.0, "output": "first"}, app=app).wait(timeout=30)
    # When it runs a long job, 2 jobs wait behind it for region:eu, and 3 for region:us, which
    # no online worker has
    blocker = submit_job("simulation", {"steps": 1, "step_seconds": 20.0, "output": "busy"}, app=app)
    wait_for(lambda: blocker.status().value == "processing", 30, what="the long job to run")
    for n in range(2):
        submit_job("simulation", quick(n), requires={"tags": ["region:eu"]}, app=app)
    for n in range(3):
        submit_job("simulation", quick(n), requires={"tags": ["region:us"]}, app=app)

    def scraped() -> dict[str, Any] | None:
        samples = scrape(monitor.get("/metrics").text)
        unmet = value(samples, "jobqueue_capability_unmet_jobs", service="simulation", capability="tag:region:us")
        return samples if unmet == 3 else None

    samples = wait_for(scraped, 30, interval=0.3, what="the unmet jobs to show")
    # Then per service: 5 queued (the index the caps count), 3 that nobody online can run
    assert value(samples, "jobqueue_service_queued_jobs", service="simulation") == 5
    assert value(samples, "jobqueue_service_unrunnable_jobs", service="simulation") == 3
    # and per capability: queued and unmet
    assert value(samples, "jobqueue_capability_queued_jobs", service="simulation", capability="tag:region:eu") == 2
    assert value(samples, "jobqueue_capability_unmet_jobs", service="simulation", capability="tag:region:eu") == 0
    assert value(samples, "jobqueue_capability_queued_jobs", service="simulation", capability="tag:region:us") == 3
    # and the drain time of the region:eu queue (at least two runs of the median), none for
    # region:us (no worker can run those) and the service's that of the jobs that can run
    drain = value(samples, "jobqueue_capability_drain_seconds", service="simulation", capability="tag:region:eu")
    assert 2.0 <= drain <= 25.0, drain
    assert (("capability", "tag:region:us"), ("service", "simulation")) not in samples.get(
        "jobqueue_capability_drain_seconds", {}), "no worker has region:us: its drain time is unknown"
    assert value(samples, "jobqueue_service_drain_seconds", service="simulation") == drain
    blocker.cancel()
