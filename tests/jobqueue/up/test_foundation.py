"""Issue 2 acceptance, through the real path: real Redis (a database of the test's own), real
``celery -A jobqueue worker`` processes, real ``jobqueue up``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis

from jobqueue.client.jobs import submit_job
from jobqueue.errors import InvalidPayloadError, JobFailed, SubmitError, UnknownServiceError
from jobqueue.shared.names import CONTROL_CONNECTOR_STATUS
from jobqueue.states import JobStatus
from jobqueue.up.embedded import free_port, plan_embedded_redis, redis_server_executable
from jobqueue.up.supervisor import component_available, tcp_answers
from tests.helpers import ROOT, wait_for
from tests.jobqueue.up_process import UpProcess, alive, up_env


def received_count(job_id: str, *logs: str) -> int:
    """How many times workers logged receiving ``job_id`` (one line per delivery)."""
    pattern = re.compile(rf"Task jobqueue\.run_job\[{re.escape(job_id)}\] received")
    return sum(len(pattern.findall(log)) for log in logs)


# -- progress, result, failure ---------------------------------------------------------------


def test_a_simulation_job_reports_increasing_progress_and_then_its_result(app, start_worker):
    # Given a real worker for gpu0
    worker = start_worker("gpu0")
    seen: list[dict] = []
    # When a five-step job is submitted and waited on
    handle = submit_job("simulation", {"steps": 5, "step_seconds": 0.2, "output": "done"}, app=app)
    result = handle.wait(timeout=30, on_progress=seen.append)
    # Then at least three increasing progress updates arrived before the result
    percents = [p["percent"] for p in seen]
    assert len(percents) >= 3, seen
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert all(p["total_steps"] == 5 for p in seen)
    assert result["output"] == "done" and result["steps"] == 5
    assert result["worker"] == worker.node_name
    assert handle.status() == JobStatus.COMPLETED
    assert handle.progress()["percent"] == 100.0


def test_a_failing_step_makes_wait_raise_job_failed_with_the_connectors_message(app, start_worker):
    # Given a real worker
    start_worker("gpu0")
    # When a job fails at its second step
    handle = submit_job("simulation", {"steps": 4, "step_seconds": 0.05, "fail_at_step": 2}, app=app)
    with pytest.raises(JobFailed) as caught:
        handle.wait(timeout=30)
    # Then the error carries the connector's own message and type, and the status is failed
    assert caught.value.error["message"] == "simulated failure at step 2"
    assert caught.value.error["type"] == "ExecutionFailed"
    assert caught.value.status == "failed"
    assert handle.status() == JobStatus.FAILED
    with pytest.raises(JobFailed):
        handle.result()


# -- refused at submit time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "payload", "options", "error", "words"),
    [
        ("no-such-service", {"steps": 1}, {}, UnknownServiceError, "unknown service"),
        ("simulation", {"steps": "five"}, {}, InvalidPayloadError, "'steps'"),
        ("simulation", {"steps": 1, "colour": "red"}, {}, InvalidPayloadError, "unknown field"),
        ("simulation", ["not", "a", "dict"], {}, InvalidPayloadError, ""),
        ("simulation", {"steps": 1}, {"priority": 12}, SubmitError, "priority"),
        ("simulation", {"steps": 1}, {"priority": "high"}, SubmitError, "priority"),
        ("simulation", {"steps": 1}, {"timeout": -1}, SubmitError, "timeout"),
        ("simulation", {"steps": 1}, {"queue": " "}, SubmitError, "queue"),
    ],
)
def test_a_refused_job_raises_a_clear_error_and_enqueues_nothing(
    app, redis_client, service, payload, options, error, words
):
    # Given an empty broker database
    assert redis_client.dbsize() == 0
    # When a job with something wrong is submitted
    with pytest.raises(error) as caught:
        submit_job(service, payload, app=app, **options)
    # Then the error says what is wrong, and nothing reached Redis
    assert words in str(caught.value)
    assert redis_client.dbsize() == 0, redis_client.keys()
    # (and a valid job on the same app does reach it: the check above can fail)
    submit_job("simulation", {"steps": 1}, app=app)
    assert any(k.startswith(b"simulation") for k in redis_client.keys())


# -- redelivery and the lease ----------------------------------------------------------------


def test_a_job_whose_worker_is_killed_is_completed_by_a_second_worker(app, start_worker, settings):
    # Given a job running on worker A
    first = start_worker("gpu0")
    handle = submit_job("simulation", {"steps": 10, "step_seconds": 0.5, "output": "survived"}, app=app)
    wait_for(lambda: handle.progress()["step"] >= 1, 20, what="the job to start on the first worker")
    assert received_count(handle.id, first.log_text()) == 1
    # When A's whole process group is SIGKILLed (no goodbye, no restore of its own)
    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    second = start_worker("gpu1")
    # Then the job reaches worker B within ~30 s and B completes it
    wait_for(lambda: received_count(handle.id, second.log_text()) == 1, 30,
             what="the job to be redelivered to the second worker")
    redelivered_after = time.monotonic() - killed_at
    result = handle.wait(timeout=30)
    assert result["worker"] == second.node_name != first.node_name
    assert result["output"] == "survived"
    # as a new attempt (its progress starts afresh), though Celery's retry count did not move
    assert result["attempt"] == 1
    # and it came back once its lease had expired (the last renewal was at most one lease
    # interval before the kill), not after kombu's ~100 s
    assert settings.visibility_timeout - settings.lease_interval <= redelivered_after < 30


def test_a_live_job_longer_than_three_visibility_timeouts_runs_exactly_once(app, start_worker):
    # Given two idle workers with a 3 s visibility timeout, renewing their lease every second
    short = {"VISIBILITY_TIMEOUT": "3", "LEASE_INTERVAL": "1"}
    first = start_worker("gpu0", **short)
    second = start_worker("gpu1", **short)
    # When a 10 s job runs (more than three times the visibility timeout)
    handle = submit_job("simulation", {"steps": 10, "step_seconds": 1.0}, app=app)
    result = handle.wait(timeout=60)
    # Then it ran to the end once: it was delivered to exactly one worker, never handed out again
    assert result["duration"] >= 9.0
    logs = (first.log_text(), second.log_text())
    assert received_count(handle.id, *logs) == 1, logs

    def succeeded() -> int:
        return sum(log.count(f"jobqueue.run_job[{handle.id}] succeeded") for log in (first.log_text(), second.log_text()))

    # (Celery logs the success just after it stores the result, which wait() returns at once)
    wait_for(lambda: succeeded() >= 1, 10, what="the success to be logged")
    assert succeeded() == 1
    assert result["attempt"] == 0


# -- worker identity -------------------------------------------------------------------------


def _identity_reply(app, node: str) -> dict:
    replies = app.control.broadcast(CONTROL_CONNECTOR_STATUS, destination=[node], reply=True, timeout=3)
    answers = [reply[node] for reply in replies or [] if node in reply]
    assert len(answers) == 1, replies
    return answers[0]


def test_a_worker_knows_its_machine_and_gpu_and_keeps_them_across_a_restart(app, start_worker, machine_id):
    # Given a worker started with -Q gpu1 on machine <machine_id>
    worker = start_worker("gpu1")
    node = f"gpu1@{machine_id}"
    # When it is asked who it is
    first = _identity_reply(app, node)
    # Then it names its machine, its GPU and its connectors
    assert first["worker"] == node
    assert first["machine_id"] == machine_id
    assert first["gpu"] == 1
    assert "simulation" in first["connectors"]
    assert {"gpu1", "simulation", f"machine.{machine_id}", f"gpu1.{machine_id}"} <= set(first["queues"])
    # And after a restart it reports exactly the same identity
    worker.stop()
    start_worker("gpu1")
    again = _identity_reply(app, node)
    for key in ("worker", "machine_id", "gpu", "queues"):
        assert again[key] == first[key]
    assert set(again["connectors"]) == set(first["connectors"])


# -- jobqueue up -----------------------------------------------------------------------------


def test_the_embedded_redis_takes_the_configured_local_port_and_database():
    port = free_port()
    plan = plan_embedded_redis(f"redis://localhost:{port}/4")
    assert plan.url == f"redis://127.0.0.1:{port}/4"
    assert "--save" in plan.command("redis-server", "/tmp/x") and "--port" in plan.command("redis-server", "/tmp/x")


def test_the_embedded_redis_moves_to_a_free_port_when_the_configured_one_is_busy():
    # Given a broker URL on a port something else holds (and that does not answer as Redis)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        plan = plan_embedded_redis(f"redis://127.0.0.1:{port}/0")
    assert plan.port != port
    # A RabbitMQ URL gets a Redis of its own too
    assert plan_embedded_redis("amqp://guest:guest@127.0.0.1:5672//").url.startswith("redis://127.0.0.1:")
    assert redis_server_executable()


@pytest.mark.slow
def test_jobqueue_up_without_a_broker_runs_a_job_and_sigint_leaves_no_process(tmp_path, machine_id):
    # Given `jobqueue up` configured with a broker nobody runs (so it must embed Redis)
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    env = up_env(tmp_path, machine_id, broker)
    up = UpProcess(env, tmp_path / "up.log", "--comfyui-port", str(free_port()))
    try:
        up.wait_up()
        assert "starting an embedded Redis" in up.output()
        assert any("redis-server" in p.name() for p in up.descendants), up.descendants
        # and every optional component that exists in this tree runs too
        if component_available("comfyui-sim")[0]:
            assert "comfyui-sim  http://127.0.0.1:" in up.output()
            assert "connectors simulation, comfyui" in up.output()
        if component_available("monitor")[0]:
            assert tcp_answers("127.0.0.1", int(env["JOBQUEUE_MONITOR_PORT"]))
        # When another shell, with no JOBQUEUE_BROKER_URL set, submits a job through the CLI
        second_shell = {k: v for k, v in env.items() if k != "JOBQUEUE_BROKER_URL"}
        done = subprocess.run(
            [sys.executable, "-m", "jobqueue.cli", "submit", "simulation",
             '{"steps": 3, "step_seconds": 0.2, "output": "via up"}', "--wait", "--wait-timeout", "30"],
            env=second_shell, cwd=str(ROOT), capture_output=True, text=True, timeout=60,
        )
        # Then the job completes on up's worker
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["output"] == "via up"
        assert result["worker"] == f"gpu0@{machine_id}"
        # When up gets SIGINT (Ctrl-C)
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0, up.output()[-3000:]
        # Then every process it started is gone, and the embedded broker with them
        assert alive(up.descendants) == []
        assert not (tmp_path / "data" / "up.json").exists()
        client = redis.Redis.from_url(broker, socket_connect_timeout=1)
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        up.cleanup()


@pytest.mark.slow
def test_jobqueue_up_restarts_a_worker_that_dies_and_the_new_one_runs_jobs(tmp_path, machine_id, redis_url, app):
    # Given `jobqueue up` on a broker that answers (the test's Redis database: nothing embedded)
    env = up_env(tmp_path, machine_id, redis_url)
    up = UpProcess(env, tmp_path / "up.log", "--no-comfyui-sim", "--no-monitor")
    try:
        up.wait_up()
        assert "(configured)" in up.output() and "embedded" not in up.output()
        worker = up.child("celery")
        # When its worker dies on its own
        os.killpg(worker.pid, signal.SIGKILL)
        # Then up says so, starts it again, and keeps running
        wait_for(lambda: "worker: running again" in up.output(), 90, interval=0.2, what="the worker's restart")
        assert "worker: exited with code -9: restarting in 1 s" in up.output()
        assert up.proc.poll() is None and up.child("celery").pid != worker.pid
        # and the new worker runs jobs
        job = submit_job("simulation", {"steps": 1, "output": "after restart"}, app=app)
        assert job.wait(timeout=60)["output"] == "after restart"
    finally:
        up.cleanup()
