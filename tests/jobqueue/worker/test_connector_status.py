"""Connector status never goes stale, and a worker whose service is down steps aside.

Real Redis (the test's database), real worker processes, real Celery events captured by a
``celery.events`` Receiver. The simulation connector's fault switch (a file whose existence
means "the service is down") plays the dying service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from jobqueue.client.jobs import submit_job
from jobqueue.shared.names import CONNECTOR_STATUS, CONTROL_CONNECTOR_STATUS
from tests.helpers import wait_for
from tests.jobqueue.event_capture import EventCapture

HEALTH = 0.5
BEAT = 2.0
FAST = {"HEALTH_INTERVAL": str(HEALTH), "STATUS_BEAT": str(BEAT)}


@pytest.fixture
def capture(app: Any) -> Iterator[EventCapture]:
    """Every event on the test's broker, from before any worker starts."""
    receiver = EventCapture(app).start()
    yield receiver
    receiver.stop()


def statuses(capture: EventCapture, node: str, service: str = "simulation") -> list[dict[str, Any]]:
    """connector-status events of one connector on one worker, in seq order."""
    events = capture.matching(CONNECTOR_STATUS, worker=node, service=service)
    return sorted(events, key=lambda e: e["seq"])


def changes(capture: EventCapture, node: str, service: str = "simulation") -> list[str]:
    """The statuses a connector went through (change events only, beats left out)."""
    return [e["status"] for e in statuses(capture, node, service) if not e["beat"]]


def consumed_queues(app: Any, node: str) -> list[str]:
    replies = app.control.inspect(destination=[node], timeout=2.0).active_queues() or {}
    return sorted(q["name"] for q in replies.get(node, []))


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` holds (its connections to Redis)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def ask_status(app: Any, node: str, timeout: float = 10.0) -> dict[str, Any]:
    """The worker's answer to the connector-status control command.

    Asked again until ``timeout``: a worker that has just (re)connected to the broker sends
    events before its control consumer is subscribed again, so one broadcast can go unheard.
    """

    def ask() -> dict[str, Any] | None:
        replies = app.control.broadcast(CONTROL_CONNECTOR_STATUS, destination=[node], reply=True, timeout=2.0)
        for reply in replies or []:
            if node in reply:
                answer: dict[str, Any] = reply[node]
                return answer
        return None

    return wait_for(ask, timeout, what=f"{node} to answer {CONTROL_CONNECTOR_STATUS}")


def test_a_worker_reports_its_connector_from_starting_to_idle_with_its_identity(app, start_worker, capture, settings):
    # Given a capture running before the worker exists
    # When a worker starts with a healthy simulated service
    worker = start_worker("gpu0", **FAST)
    node = worker.node_name
    wait_for(lambda: "idle" in changes(capture, node), 10, what="an idle event")
    # Then it went starting -> idle, each event numbered in order and carrying the identity
    assert changes(capture, node)[:2] == ["starting", "idle"]
    events = statuses(capture, node)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    first = events[0]
    assert first["worker"] == node == first["hostname"]
    assert first["machine_id"] == settings.machine_id
    assert first["gpu"] == 0
    assert first["connectors"] == ["simulation"]
    assert "simulation" in first["queues"] and "gpu0" in first["queues"]
    assert first["interval"] == BEAT
    assert events[-1]["details"].get("kind") == "simulation"


def test_a_service_that_goes_down_stops_its_queue_and_jobs_go_to_a_healthy_worker(app, start_worker, capture, tmp_path):
    # Given two workers, each with a simulated service of its own
    down0, down1 = tmp_path / "down0", tmp_path / "down1"
    gpu0 = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down0), **FAST).node_name
    gpu1 = start_worker("gpu1", SIMULATION_DOWN_FILE=str(down1), **FAST).node_name
    wait_for(lambda: "idle" in changes(capture, gpu0) and "idle" in changes(capture, gpu1), 10)
    assert "simulation" in consumed_queues(app, gpu0)

    # When gpu0's service goes down
    went_down = time.time()
    down0.touch()

    # Then an error event arrives within two health intervals
    error = wait_for(lambda: [e for e in statuses(capture, gpu0) if e["status"] == "error"], 10)[0]
    assert error["message"] == "simulated service is down"
    assert error["timestamp"] - went_down <= 2 * HEALTH + 0.25
    # ... gpu0 no longer consumes the service queue (its own queues stay), gpu1 still does
    wait_for(lambda: "simulation" not in consumed_queues(app, gpu0), 5, what="gpu0 to cancel simulation")
    assert "gpu0" in consumed_queues(app, gpu0)
    assert "simulation" in consumed_queues(app, gpu1)
    # ... and every job submitted meanwhile runs on gpu1
    handles = [submit_job("simulation", {"steps": 1, "step_seconds": 0.05}, app=app) for _ in range(4)]
    assert {h.wait(timeout=30)["worker"] for h in handles} == {gpu1}

    # When the service comes back
    down0.unlink()
    # Then gpu0 is idle again and consumes again
    wait_for(lambda: changes(capture, gpu0)[-1:] == ["idle"], 10, what="gpu0 idle again")
    wait_for(lambda: "simulation" in consumed_queues(app, gpu0), 5, what="gpu0 to consume again")
    # ... for real: with gpu1's service down, the next job runs on gpu0
    down1.touch()
    wait_for(lambda: "simulation" not in consumed_queues(app, gpu1), 10, what="gpu1 to step aside")
    assert submit_job("simulation", {"steps": 1}, app=app).wait(timeout=30)["worker"] == gpu0


def test_a_worker_whose_service_is_not_up_yet_waits_without_consuming(app, start_worker, capture, tmp_path):
    # Given a service that is down when the worker starts
    down = tmp_path / "down"
    down.touch()
    node = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down), **FAST).node_name
    # Then the connector waits for its service and its queue is not consumed
    wait_for(lambda: "waiting_for_service" in changes(capture, node), 10)
    assert "simulation" not in consumed_queues(app, node)
    assert "gpu0" in consumed_queues(app, node)
    handle = submit_job("simulation", {"steps": 1}, app=app)
    # When the service comes up
    down.unlink()
    # Then the connector turns idle, consumes, and the waiting job runs here
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    assert handle.wait(timeout=30)["worker"] == node
    assert changes(capture, node)[:2] == ["starting", "waiting_for_service"]
    assert "error" not in changes(capture, node)


def test_a_job_start_and_end_produce_active_then_idle_events_in_order(app, start_worker, capture):
    # Given an idle worker
    node = start_worker("gpu0", **FAST).node_name
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    before = len(changes(capture, node))
    # When a job runs to the end
    handle = submit_job("simulation", {"steps": 3, "step_seconds": 0.1}, app=app)
    handle.wait(timeout=30)
    # Then the connector reported active (naming the job) and then idle, in seq order
    wait_for(lambda: changes(capture, node)[before:] == ["active", "idle"], 5, what="active then idle")
    active = [e for e in statuses(capture, node) if e["status"] == "active" and not e["beat"]][-1]
    assert active["message"] == f"running job {handle.id}"
    ordered = [e for e in capture.matching(CONNECTOR_STATUS, worker=node) if not e["beat"]]
    assert [e["seq"] for e in ordered] == sorted(e["seq"] for e in ordered), "events arrived out of order"


def test_the_steady_beat_re_sends_unchanged_statuses_at_its_interval(app, start_worker, capture):
    # Given an idle worker with a 2 s beat
    node = start_worker("gpu0", **FAST).node_name
    # When nothing happens for a while

    def four_beats() -> list[dict[str, Any]] | None:
        beats = [e for e in statuses(capture, node) if e["beat"]]
        return beats if len(beats) >= 4 else None

    beats = wait_for(four_beats, 6 * BEAT, what="four beats")
    # Then the same status keeps arriving, fresh, once per interval, with new sequence numbers
    assert {b["status"] for b in beats[1:]} == {"idle"}
    gaps = [b["timestamp"] - a["timestamp"] for a, b in pairwise(beats[1:])]
    assert all(0.5 * BEAT <= gap <= 1.5 * BEAT for gap in gaps), gaps
    assert all(b["interval"] == BEAT for b in beats)
    assert len({b["seq"] for b in beats}) == len(beats)


def test_the_connector_status_command_answers_what_the_events_reported(app, start_worker, capture, settings):
    # Given a worker that reported its connector idle
    node = start_worker("gpu0", **FAST).node_name
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    # When a monitor asks instead of waiting for the next beat
    answer = ask_status(app, node)
    # Then it gets the identity and the same status, under a seq the event stream carries
    assert answer["worker"] == node
    assert answer["machine_id"] == settings.machine_id
    assert answer["gpu"] == 0
    reported = answer["connectors"]["simulation"]
    assert reported["status"] == "idle"
    event = wait_for(lambda: [e for e in statuses(capture, node) if e["seq"] == reported["seq"]], 2 * BEAT + 2)[0]
    assert (event["status"], event["message"]) == (reported["status"], reported["message"])
    assert answer["seq"] >= reported["seq"]


def test_a_restarted_worker_reports_the_same_identity_and_a_higher_seq(app, start_worker, capture):
    # Given a worker that reported its connector
    worker = start_worker("gpu0", **FAST)
    node = worker.node_name
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    first = ask_status(app, node)
    # When it stops (reporting offline) and starts again with the same settings
    worker.stop()
    wait_for(lambda: changes(capture, node)[-1:] == ["offline"], 10, what="an offline event")
    last_seq = statuses(capture, node)[-1]["seq"]
    start_worker("gpu0", **FAST)
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    second = ask_status(app, node)
    # Then the identity is the same, and its reports still sort after the old process's
    keys = ("worker", "machine_id", "gpu", "queues")
    assert {k: second[k] for k in keys} == {k: first[k] for k in keys}
    assert sorted(second["connectors"]) == sorted(first["connectors"]) == ["simulation"]
    restarted = [e for e in statuses(capture, node) if e["seq"] > last_seq]
    assert restarted and restarted[0]["status"] == "starting"


def test_a_job_running_when_its_service_dies_fails_fast_and_completes_on_another_worker(
    app, start_worker, capture, tmp_path: Path
):
    # Given gpu0 running a long job while gpu1's service is still down (so gpu0 got it)
    down0, down1 = tmp_path / "down0", tmp_path / "down1"
    down1.touch()
    gpu0 = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down0), **FAST).node_name
    gpu1 = start_worker("gpu1", SIMULATION_DOWN_FILE=str(down1), **FAST).node_name
    handle = submit_job("simulation", {"steps": 40, "step_seconds": 0.25, "output": "x"}, app=app)
    wait_for(lambda: changes(capture, gpu0)[-1:] == ["active"], 15, what="gpu0 active")
    down1.unlink()
    wait_for(lambda: changes(capture, gpu1)[-1:] == ["idle"], 10, what="gpu1 healthy")
    # When gpu0's service dies mid-job
    died = time.time()
    down0.touch()
    # Then the attempt fails within a step, with the reason, and the connector reports it
    retried = wait_for(lambda: capture.matching("task-retried", uuid=handle.id), 10)[0]
    assert retried["timestamp"] - died < 2.0
    assert "simulated service went down during the job" in retried["exception"]
    messages = [e["message"] for e in statuses(capture, gpu0) if e["status"] == "error"]
    assert "simulated service went down during the job" in messages
    # ... and the retry completes on gpu1
    result = handle.wait(timeout=60)
    assert result["worker"] == gpu1
    assert result["attempt"] == 1


def test_a_worker_that_reconnects_to_the_broker_keeps_its_identity_and_its_stepped_aside_queue(
    app, start_worker, capture, redis_client, tmp_path
):
    # Given a worker whose service is down, so it does not consume the service queue
    down = tmp_path / "down"
    worker = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down), **FAST)
    node = worker.node_name
    wait_for(lambda: changes(capture, node)[-1:] == ["idle"], 10)
    before = ask_status(app, node)
    down.touch()
    wait_for(lambda: "simulation" not in consumed_queues(app, node), 10)
    # When its broker connection is cut (the server drops the worker's consuming connection)
    cut_at = time.time()

    def cut() -> int:
        ports = local_tcp_ports(worker.proc.pid)
        clients = [
            c for c in redis_client.client_list()
            if c.get("cmd") == "brpop" and int(c["addr"].rsplit(":", 1)[1]) in ports
        ]
        for client in clients:
            redis_client.client_kill_filter(_id=client["id"])
        return len(clients)

    wait_for(cut, 10, what="the worker's consuming connection")
    wait_for(lambda: "Connection to broker lost" in worker.log_text(), 10, what="the consumer to restart")
    # Then after reconnecting it still answers as itself, re-sends its full set at once...
    resent = wait_for(lambda: [e for e in statuses(capture, node) if e["beat"] and e["timestamp"] > cut_at], 10)[0]
    assert resent["worker"] == node and resent["machine_id"] == before["machine_id"]
    assert resent["status"] == "error"
    after = ask_status(app, node)
    assert {k: after[k] for k in ("worker", "machine_id", "gpu", "queues")} == {
        k: before[k] for k in ("worker", "machine_id", "gpu", "queues")
    }
    assert after["seq"] > before["seq"]
    # ... and the service queue it stepped aside from stays off until the service is back
    queues = wait_for(lambda: consumed_queues(app, node), 10, what=f"{node} to list its queues")
    assert "gpu0" in queues and "simulation" not in queues
    down.unlink()
    wait_for(lambda: "simulation" in consumed_queues(app, node), 10)
