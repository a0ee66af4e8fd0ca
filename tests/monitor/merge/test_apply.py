"""apply(): merging events by precedence, idempotently, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobqueue.errors import MalformedEvent
from monitor.merge.apply import apply, expire
from monitor.store import Store

T0 = 1_700_000_000.0


def ev(type_: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "timestamp": T0 + t, "local_received": T0 + t, **fields}


def meta(service: str = "simulation", priority: int = 5) -> str:
    return json.dumps({"service": service, "priority": priority, "queue": service, "submitted_at": T0})


def run(store: Store, *events: Any, now: float | None = None) -> list[bool]:
    results = []
    with store.write(now) as tx:
        for e in events:
            results.append(apply(e, tx))
    return results


def job(store: Store, job_id: str = "j1") -> dict[str, Any]:
    data = store.job(job_id)
    assert data is not None
    return data


def test_a_job_moves_through_its_life_and_records_its_timeline(store):
    # Given a job sent, received, started, progressing and succeeding
    run(store,
        ev("task-sent", 0, uuid="j1", name="jobqueue.run_job", kwargs=meta()),
        ev("task-received", 1, uuid="j1", hostname="gpu0@vm1", kwargs=meta(), retries=0),
        ev("task-started", 2, uuid="j1", hostname="gpu0@vm1"),
        ev("task-progress", 3, uuid="j1", hostname="gpu0@vm1", percent=50.0, step=5, total_steps=10, attempt=0),
        ev("task-succeeded", 4, uuid="j1", hostname="gpu0@vm1", result="{'output': 'x'}", runtime=2.0))
    # Then it is completed with its metadata, result and five timeline entries
    data = job(store)
    assert data["status"] == "completed"
    assert (data["service"], data["priority"], data["queue"], data["worker"], data["machine_id"]) == \
        ("simulation", 5, "simulation", "gpu0@vm1", "vm1")
    assert data["result"] == {"output": "x"} and data["runtime"] == 2.0
    assert data["progress"]["percent"] == 100.0
    assert [e["type"] for e in data["events"]] == ["task-sent", "task-received", "task-started",
                                                    "task-progress", "task-succeeded"]


def test_a_late_task_started_never_moves_a_completed_job_back(store):
    # Given a completed job
    run(store, ev("task-sent", 0, uuid="j1", kwargs=meta()), ev("task-succeeded", 5, uuid="j1", runtime=1.0))
    seq = store.seq()
    # When task-started and a progress event arrive late
    changed = run(store, ev("task-started", 2, uuid="j1", hostname="gpu0@vm1"),
                  ev("task-progress", 3, uuid="j1", percent=10.0, step=1, total_steps=10))
    # Then it is still completed (a missing start time may be filled in, nothing else)
    assert job(store)["status"] == "completed"
    assert changed[1] is False
    assert store.seq() >= seq


def test_a_duplicate_event_changes_nothing(store):
    # Given a job that was sent and started
    events = [ev("task-sent", 0, uuid="j1", kwargs=meta()), ev("task-started", 1, uuid="j1", hostname="gpu0@vm1")]
    run(store, *events)
    seq = store.seq()
    # When the same events arrive again
    changed = run(store, *events)
    # Then nothing changed: no new sequence number
    assert changed == [False, False]
    assert store.seq() == seq


def test_progress_never_goes_backwards_within_an_attempt(store):
    # Given a job at 60 %
    run(store, ev("task-started", 0, uuid="j1", hostname="gpu0@vm1"),
        ev("task-progress", 1, uuid="j1", percent=60.0, step=6, total_steps=10, attempt=0))
    # When an older 30 % report arrives late
    changed = run(store, ev("task-progress", 0.5, uuid="j1", percent=30.0, step=3, total_steps=10, attempt=0))
    # Then the progress stays at 60 %
    assert changed == [False]
    assert job(store)["progress"]["percent"] == 60.0


def test_a_retried_job_starts_a_new_attempt_with_fresh_progress(store):
    # Given a job that failed its first attempt at 80 % and was retried
    run(store, ev("task-started", 0, uuid="j1", hostname="gpu0@vm1"),
        ev("task-progress", 1, uuid="j1", percent=80.0, step=8, total_steps=10, attempt=0),
        ev("task-retried", 2, uuid="j1", hostname="gpu0@vm1", exception="ServiceUnavailable('down', {})"))
    assert job(store)["status"] == "retrying"
    # When the second attempt starts on another worker and reports 10 %
    run(store, ev("task-received", 3, uuid="j1", hostname="gpu1@vm1", retries=1),
        ev("task-started", 4, uuid="j1", hostname="gpu1@vm1"),
        ev("task-progress", 5, uuid="j1", percent=10.0, step=1, total_steps=10, attempt=1))
    # Then it is processing on the new worker at 10 %, attempt 1
    data = job(store)
    assert (data["status"], data["worker"], data["attempt"]) == ("processing", "gpu1@vm1", 1)
    assert data["progress"]["percent"] == 10.0
    # And a late report of the old attempt changes nothing
    assert run(store, ev("task-progress", 1.5, uuid="j1", percent=90.0, step=9, total_steps=10, attempt=0)) == [False]


def test_a_failure_keeps_its_parsed_error_and_timeouts_are_their_own_state(store):
    run(store, ev("task-failed", 1, uuid="j1", exception="ExecutionFailed('node 3 failed', {'node_id': '3'})"),
        ev("task-failed", 1, uuid="j2", exception="JobTimedOut('too slow', {})"))
    assert job(store)["error"] == {"type": "ExecutionFailed", "message": "node 3 failed", "details": {"node_id": "3"}}
    assert job(store, "j2")["status"] == "timed_out"


@pytest.mark.parametrize("bad", [
    None, "text", 42, [], {}, {"type": 5},
    {"type": "task-nonsense", "uuid": "x", "timestamp": T0},
    {"type": "task-started", "timestamp": T0},
    {"type": "task-started", "uuid": 12, "timestamp": T0},
    {"type": "task-started", "uuid": "x" * 10_000, "timestamp": T0},
    {"type": "task-started", "uuid": "x", "timestamp": "yesterday"},
    {"type": "task-progress", "uuid": "x", "timestamp": T0, "percent": "half"},
    {"type": "task-progress", "uuid": "x", "timestamp": T0, "percent": float("nan")},
    {"type": "worker-heartbeat", "timestamp": T0},
    {"type": "worker-heartbeat", "hostname": "w", "timestamp": T0, "loadavg": "high"},
    {"type": "connector-status", "hostname": "w", "service": "s", "status": "sleepy", "timestamp": T0},
    {"type": "task-failed", "uuid": "x", "timestamp": T0, "exception": {"not": "a string"}},
])
def test_a_malformed_event_is_refused_and_touches_nothing(store, bad):
    seq = store.seq()
    with pytest.raises(MalformedEvent), store.write() as tx:
        apply(bad, tx)
    assert store.seq() == seq
    assert store.snapshot()["jobs"] == [] and store.snapshot()["workers"] == []


def test_huge_strings_are_cut_not_stored_whole(store):
    run(store, ev("task-progress", 1, uuid="j1", percent=5.0, message="m" * 1_000_000))
    assert len(job(store)["progress"]["message"]) < 3000


def test_a_silent_worker_goes_offline_and_its_job_is_lost_not_processing(store):
    # Given a worker with heartbeat every 1 s running a job
    run(store, ev("worker-online", 0, hostname="gpu0@vm1", freq=1.0),
        ev("task-started", 0.5, uuid="j1", hostname="gpu0@vm1"))
    # When 3.5 s pass without a heartbeat
    with store.write(now=T0 + 3.5) as tx:
        expire(tx, default_freq=2.0, default_beat=15.0)
    # Then the worker is offline, its machine too, and the job is lost
    assert store.worker("gpu0@vm1")["status"] == "offline"
    assert store.machines()[0]["status"] == "offline"
    assert job(store)["status"] == "lost"
    # And when the broker hands the job to another worker it runs again
    run(store, ev("task-received", 20, uuid="j1", hostname="gpu1@vm1"), ev("task-started", 21, uuid="j1", hostname="gpu1@vm1"))
    assert (job(store)["status"], job(store)["worker"]) == ("processing", "gpu1@vm1")


def test_a_connector_status_older_than_two_beats_is_stale_until_the_next_report(store):
    status = dict(worker="gpu0@vm1", hostname="gpu0@vm1", machine_id="vm1", gpu=0, service="simulation",
                  status="idle", message="", seq=1, pid=10, interval=2.0, details={"v": 1},
                  connectors=["simulation"], queues=["gpu0", "simulation"], beat=False)
    run(store, ev("connector-status", 0, **status))
    with store.write(now=T0 + 5) as tx:
        expire(tx, default_freq=2.0, default_beat=15.0)
    worker = store.worker("gpu0@vm1")
    assert worker["connectors"]["simulation"]["stale"] is True
    assert worker["identity_complete"] is True and worker["queues"] == ["gpu0", "simulation"]
    run(store, ev("connector-status", 6, **{**status, "seq": 2, "status": "active"}))
    conn = store.worker("gpu0@vm1")["connectors"]["simulation"]
    assert (conn["status"], conn["stale"]) == ("active", False)
    # An older report of the same worker process arriving late is ignored
    run(store, ev("connector-status", 7, **{**status, "seq": 1, "status": "error"}))
    assert store.worker("gpu0@vm1")["connectors"]["simulation"]["status"] == "active"


def test_a_worker_identity_is_never_replaced_by_unknown_and_conflicts_are_warned(store):
    run(store, ev("connector-status", 0, worker="gpu0@vm1", machine_id="vm1", gpu=0, service="simulation", status="idle"))
    run(store, ev("connector-status", 1, worker="gpu0@vm1", machine_id="unknown", gpu=0, service="simulation", status="idle"))
    assert store.worker("gpu0@vm1")["machine_id"] == "vm1"
    run(store, ev("connector-status", 2, worker="gpu0@vm1", machine_id="vm2", gpu=0, service="simulation", status="idle"))
    worker = store.worker("gpu0@vm1")
    assert worker["machine_id"] == "vm1" and "vm2" in worker["identity_warning"]
    assert worker["identity_complete"] is False


def test_a_worker_with_an_odd_name_is_shown_with_a_warning(store):
    run(store, ev("worker-heartbeat", 0, hostname="celery@somewhere-odd", freq=2.0))
    worker = store.worker("celery@somewhere-odd")
    assert worker is not None and worker["identity_warning"] == "missing machine_id"


def test_every_change_gets_the_next_sequence_number_and_lands_in_the_change_log(store):
    run(store, ev("task-sent", 0, uuid="j1", kwargs=meta()))
    run(store, ev("task-sent", 0, uuid="j2", kwargs=meta()))
    changes = store.changes_since(0)
    assert [c["seq"] for c in changes] == [1, 2]
    assert [c["id"] for c in changes] == ["j1", "j2"]
    assert store.snapshot()["seq"] == 2
    assert store.changes_since(2) == []


def test_old_finished_jobs_are_pruned_by_count_and_pruning_is_a_change(store_url):
    store = Store(store_url, keep_jobs=3, keep_seconds=3600.0, changes_keep=5)
    try:
        for i in range(6):
            run(store, ev("task-succeeded", i, uuid=f"j{i}", runtime=1.0), now=T0 + 10)
        run(store, ev("task-started", 7, uuid="open"), now=T0 + 10)
        assert store.prune(now=T0 + 10) == 3
        ids = {j["id"] for j in store.snapshot()["jobs"]}
        assert ids == {"j3", "j4", "j5", "open"}
        # The log kept only the last 5 changes: a client at seq 0 needs a fresh snapshot
        assert store.changes_since(0) is None
        assert store.changes_since(store.seq() - 1)[0]["data"] is None
    finally:
        store.close()


def test_a_worker_counts_the_failed_jobs_it_ran_and_the_count_is_a_change(store):
    run(store, ev("worker-online", 0, hostname="gpu0@vm1", freq=1.0),
        ev("task-started", 1, uuid="j1", hostname="gpu0@vm1"))
    seq = store.seq()
    run(store, ev("task-failed", 2, uuid="j1", hostname="gpu0@vm1", exception="ExecutionFailed('x', {})"))
    assert store.worker("gpu0@vm1")["failed"] == 1
    kinds = {(c["kind"], c["id"]) for c in store.changes_since(seq)}
    assert ("worker", "gpu0@vm1") in kinds
    assert [c for c in store.changes_since(seq) if c["kind"] == "worker"][-1]["data"]["failed"] == 1


def test_a_workers_counts_come_from_its_jobs_so_a_replayed_or_repaired_final_event_counts_once(store):
    # Given a worker that ran one job to completion and one that failed
    run(store, ev("worker-online", 0, hostname="gpu0@vm1", freq=1.0, processed=0),
        ev("task-started", 1, uuid="j1", hostname="gpu0@vm1"),
        ev("task-succeeded", 2, uuid="j1", hostname="gpu0@vm1", runtime=1.0),
        ev("task-started", 3, uuid="j2", hostname="gpu0@vm1"),
        ev("task-failed", 4, uuid="j2", hostname="gpu0@vm1", exception="ExecutionFailed('x', {})"))
    assert (store.worker("gpu0@vm1")["processed"], store.worker("gpu0@vm1")["failed"]) == (2, 1)
    # When the final events arrive again, and truth repair re-reports them from the backend
    run(store, ev("task-succeeded", 2, uuid="j1", hostname="gpu0@vm1", runtime=1.0),
        ev("task-failed", 4, uuid="j2", hostname="gpu0@vm1", exception="ExecutionFailed('x', {})"),
        {**ev("task-succeeded", 9, uuid="j1", hostname="gpu0@vm1", runtime=1.0), "source": "repair"},
        {**ev("task-failed", 9, uuid="j2", hostname="gpu0@vm1",
              error={"type": "ExecutionFailed", "message": "x", "details": {}}), "source": "repair"})
    # And a heartbeat reports Celery's own per-process counter
    run(store, ev("worker-heartbeat", 10, hostname="gpu0@vm1", freq=1.0, processed=7))
    # Then each job still counts once, and Celery's counter is shown apart
    worker = store.worker("gpu0@vm1")
    assert (worker["processed"], worker["failed"], worker["celery_processed"]) == (2, 1, 7)
    # And a retried job counts only when it ends
    run(store, ev("task-started", 11, uuid="j3", hostname="gpu0@vm1"),
        ev("task-retried", 12, uuid="j3", hostname="gpu0@vm1", exception="ExecutionFailed('y', {})"))
    assert store.worker("gpu0@vm1")["processed"] == 2
    assert store.worker("gpu0@vm1")["current_job"] is None


def test_pruning_a_workers_jobs_changes_its_counts_and_says_so(store_url):
    store = Store(store_url, keep_jobs=1, keep_seconds=3600.0)
    try:
        run(store, ev("worker-online", 0, hostname="gpu0@vm1", freq=1.0),
            *[ev("task-succeeded", i + 1, uuid=f"j{i}", hostname="gpu0@vm1", runtime=1.0) for i in range(3)],
            now=T0 + 10)
        assert store.worker("gpu0@vm1")["processed"] == 3
        seq = store.seq()
        store.prune(now=T0 + 10)
        assert store.worker("gpu0@vm1")["processed"] == 1
        worker_changes = [c for c in store.changes_since(seq) if c["kind"] == "worker"]
        assert worker_changes and worker_changes[-1]["data"]["processed"] == 1
    finally:
        store.close()


def test_jobs_that_ended_before_their_worker_was_known_count_when_it_appears(store):
    # Given jobs that ended on a worker the store has not seen yet (a monitor started late
    # rebuilds jobs from the result backend before any heartbeat), and one without a worker
    run(store, ev("task-succeeded", 1, uuid="j1", hostname="gpu0@vm1", runtime=1.0),
        ev("task-failed", 2, uuid="j2", hostname="gpu0@vm1", exception="ExecutionFailed('x', {})"),
        ev("task-succeeded", 3, uuid="j3", runtime=1.0))
    # When the worker shows up, in the same batch as another job ending on it
    run(store, ev("worker-heartbeat", 4, hostname="gpu0@vm1", freq=1.0),
        ev("task-succeeded", 5, uuid="j4", hostname="gpu0@vm1", runtime=1.0))
    # Then every job that ended on it counts, once
    assert (store.worker("gpu0@vm1")["processed"], store.worker("gpu0@vm1")["failed"]) == (3, 1)
    # And a late task-received that names the worker of the ended job j3 moves it to that worker
    run(store, ev("worker-heartbeat", 6, hostname="gpu1@vm1", freq=1.0))
    run(store, ev("task-received", 0.5, uuid="j3", hostname="gpu1@vm1"))
    assert store.worker("gpu1@vm1")["processed"] == 1
    assert store.worker("gpu0@vm1")["processed"] == 3


def test_a_database_of_an_older_monitor_gets_its_worker_counts_from_its_jobs(tmp_path):
    # Given a database written before workers kept job counters
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    run(store, ev("worker-online", 0, hostname="gpu0@vm1", freq=1.0),
        ev("task-succeeded", 1, uuid="j1", hostname="gpu0@vm1", runtime=1.0),
        ev("task-failed", 2, uuid="j2", hostname="gpu0@vm1", exception="ExecutionFailed('x', {})"))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE workers DROP COLUMN ended")
        conn.exec_driver_sql("UPDATE workers SET failed = 0")
        conn.exec_driver_sql("DROP TABLE alembic_version")  # nor did it know migrations,
        for table in ("audit", "api_keys", "writer_lease"):  # nor the tables of revisions after the baseline
            conn.exec_driver_sql(f"DROP TABLE {table}")
        for index in ("ix_jobs_parent_id", "ix_jobs_root_id", "ix_jobs_tenant_when"):  # nor their columns
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for column in ("task", "parent_id", "root_id", "tenant"):
            conn.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.exec_driver_sql("ALTER TABLE changes DROP COLUMN tenant")
        conn.exec_driver_sql("ALTER TABLE workers DROP COLUMN clock_skew")
    store.close()
    # When a new monitor opens it
    upgraded = Store(url)
    try:
        # Then the counts are there, counted from the jobs it holds
        assert (upgraded.worker("gpu0@vm1")["processed"], upgraded.worker("gpu0@vm1")["failed"]) == (2, 1)
    finally:
        upgraded.close()


def test_the_jobs_list_counts_every_match_exactly_and_pages_in_the_asked_order(store):
    # Given 5 jobs
    run(store, *[ev("task-sent", i, uuid=f"j{i}", kwargs=meta()) for i in range(5)])
    # When a page of 2 is asked for, with and without a filter, newest and oldest first
    found, total = store.jobs(limit=2)
    few, few_total = store.jobs(q="j1")
    oldest, _ = store.jobs(limit=2, offset=1, descending=False)
    # Then the page is in that order and the count is every match
    assert [j["id"] for j in found] == ["j4", "j3"]
    assert total == 5
    assert ([j["id"] for j in few], few_total) == (["j1"], 1)
    assert [j["id"] for j in oldest] == ["j1", "j2"]


def status_ev(t: float, status: str, seq: int | None, *, repair: bool = False) -> dict[str, Any]:
    event = ev("connector-status", t, worker="gpu0@vm1", machine_id="vm1", gpu=0, service="simulation",
               status=status, message=status, seq=seq, interval=15.0, pid=100)
    return {**event, "source": "repair"} if repair else event


def connector(store: Store) -> dict[str, Any]:
    return store.worker("gpu0@vm1")["connectors"]["simulation"]


def test_an_older_repair_answer_never_overwrites_a_newer_connector_event(store):
    # Given an error reported by the worker with seq 10
    run(store, status_ev(0, "error", 10))
    # When a repair answer that was taken before it (seq 9, idle) is applied afterwards
    changed = run(store, status_ev(1, "idle", 9, repair=True))
    # Then the error stays
    assert connector(store)["status"] == "error" and connector(store)["seq"] == 10
    assert changed == [False]
    # And a newer repair answer (seq 11) replaces it
    run(store, status_ev(2, "idle", 11, repair=True))
    assert (connector(store)["status"], connector(store)["seq"]) == ("idle", 11)


def test_a_late_connector_event_never_overwrites_a_newer_repair_answer(store):
    # Given a repair answer at seq 20 (active)
    run(store, status_ev(5, "active", 20, repair=True))
    # When an event the worker sent earlier (seq 19, error) arrives late, even with a later
    # timestamp
    run(store, status_ev(6, "error", 19))
    # Then the newer status stays
    assert (connector(store)["status"], connector(store)["seq"]) == ("active", 20)
    # And a restarted worker's first report (seq from its start time, far larger) applies
    run(store, status_ev(7, "starting", 1_700_000_000_000))
    assert connector(store)["status"] == "starting"


def test_a_repair_answer_with_the_same_seq_makes_a_stale_status_fresh_again(store):
    # Given a status that went stale
    run(store, status_ev(0, "idle", 5))
    with store.write(T0 + 100) as tx:
        expire(tx, default_freq=1.0, default_beat=15.0)
    assert connector(store)["stale"] is True
    # When repair finds the worker still reporting that same report
    run(store, status_ev(100, "idle", 5, repair=True), now=T0 + 100)
    # Then it is fresh again, with the same status and seq
    assert (connector(store)["status"], connector(store)["seq"], connector(store)["stale"]) == ("idle", 5, False)


def test_a_completed_job_changes_its_services_median_as_a_change_in_the_log(store):
    # Given completed jobs of one service with runtimes 1, 2 and 4 s
    seq = store.seq()
    for i, runtime in enumerate((1.0, 2.0, 4.0)):
        run(store, ev("task-sent", i, uuid=f"j{i}", kwargs=meta()),
            ev("task-succeeded", i + 0.5, uuid=f"j{i}", runtime=runtime))
    # Then the service's median is 2 s, in the snapshot and as the last "service" change
    assert store.snapshot()["services"] == [{"service": "simulation", "median": 2.0, "samples": 3,
                                             "seq": store.snapshot()["services"][0]["seq"]}]
    service_changes = [c for c in store.changes_since(seq) if c["kind"] == "service"]
    assert len(service_changes) == 3 and service_changes[-1]["data"]["median"] == 2.0
    assert store.service_medians() == {"simulation": 2.0}


def test_a_job_shows_its_workflow_step_batch_and_payload_summary_from_its_metadata(store):
    kwargs = json.dumps({"service": "simulation", "priority": 7, "queue": "simulation", "submitted_at": T0,
                         "workflow_id": "wf1", "step": 2, "workflow_steps": 3, "workflow_submitted_at": T0,
                         "batch_id": "b1", "batch_index": 1, "batch_size": 4,
                         "payload_summary": "steps=3 step_seconds=0.1"})
    run(store, ev("task-sent", 0, uuid="j1", kwargs=kwargs))
    data = job(store)
    assert (data["workflow_id"], data["step"], data["workflow_steps"], data["priority"]) == ("wf1", 2, 3, 7)
    assert (data["batch_id"], data["batch_index"], data["batch_size"]) == ("b1", 1, 4)
    assert data["payload_summary"] == "steps=3 step_seconds=0.1"
    # And the change log carries the same object
    assert store.changes_since(0)[-1]["data"]["workflow_steps"] == 3


def test_a_processing_jobs_eta_is_its_workers_and_deltas_carry_the_same_as_the_snapshot(store):
    run(store, ev("task-sent", 0, uuid="j1", kwargs=meta()),
        ev("task-started", 1, uuid="j1", hostname="gpu0@vm1"),
        ev("task-progress", 3, uuid="j1", hostname="gpu0@vm1", percent=40.0, step=4, total_steps=10,
           eta_seconds=3.0, attempt=0))
    shown = [j for j in store.snapshot()["jobs"] if j["id"] == "j1"][0]
    assert (shown["eta_seconds"], shown["eta_at"]) == (3.0, T0 + 3)
    delta = store.changes_since(0)[-1]["data"]
    assert (delta["eta_seconds"], delta["eta_at"]) == (3.0, T0 + 3)
    assert "reported_at" not in shown["progress"]
    # And a finished job has no ETA left to count down
    run(store, ev("task-succeeded", 5, uuid="j1", runtime=4.0))
    assert (job(store)["eta_seconds"], job(store)["eta_at"]) == (None, None)


def test_a_workflows_steps_are_listed_in_step_order_with_its_status(store):
    def step(n: int) -> str:
        return json.dumps({"service": "simulation", "priority": 5, "queue": "simulation", "submitted_at": T0 + n,
                           "workflow_id": "wf1", "step": n, "workflow_steps": 3})

    run(store, ev("task-sent", 0, uuid="s1", kwargs=step(1)), ev("task-succeeded", 1, uuid="s1", runtime=1.0),
        ev("task-sent", 2, uuid="s2", kwargs=step(2)), ev("task-started", 3, uuid="s2", hostname="gpu0@vm1"))
    flow = store.workflow("wf1")
    assert flow is not None
    assert [s["id"] for s in flow["steps"]] == ["s1", "s2"]
    assert (flow["status"], flow["total_steps"]) == ("processing", 3)
    run(store, ev("task-failed", 4, uuid="s2", exception="ExecutionFailed('boom', {})"))
    assert store.workflow("wf1")["status"] == "failed"
    assert store.workflow("nope") is None
    found, total = store.jobs(workflow="wf1")
    assert [j["id"] for j in found] == ["s1", "s2"] and total == 2


def test_a_job_moved_up_after_out_of_memory_reads_queued_with_the_reason_and_its_raised_requirement(store):
    # Given a job without requirements, started on an 8 GiB worker
    run(store, ev("task-sent", 0, uuid="j1", kwargs=meta("comfyui")),
        ev("task-started", 1, uuid="j1", hostname="gpu0@vm1"))
    # When the worker hands it back moved up to 10 GiB (Celery's Retry around the reason)
    reason = "OutOfMemory('out of GPU memory on gpu0@vm1 (8 GiB): moved up', {'requires': {'vram_gb': 10.0}, 'vram_tried': [8]})"
    run(store, ev("task-retried", 2, uuid="j1", hostname="gpu0@vm1",
                  exception=f"Retry('out of GPU memory on gpu0@vm1 (8 GiB): moved up', {reason}, 0)"))
    # Then it is queued again, with the reason and the raised requirement
    data = job(store)
    assert data["status"] == "queued" and data["attempt"] == 1
    assert data["error"]["type"] == "OutOfMemory" and "moved up" in data["error"]["message"]
    assert data["requires"] == {"vram_gb": 10.0}
