"""``jobqueue up`` restarts cleanly, keeps its ports and queued jobs, brings dead children back,
and leaves nothing behind even when it is SIGKILLed: real processes, real sockets, real Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from jobqueue.client.jobs import get_job, submit_job
from jobqueue.states import JobStatus
from jobqueue.up.embedded import free_port, port_is_free
from jobqueue.up.supervisor import ChildSpec, RestartPolicy, Supervisor
from tests.helpers import wait_for
from tests.jobqueue.up_process import UpProcess, alive, up_env

#: A ComfyUI workflow with a node that reports progress for about 4 s, and an image output.
SLOW_WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "HarnessSleepProgress", "inputs": {"image": ["1", 0], "steps": 16, "delay": 0.25}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "restart"}},
}


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobqueue.cli", *args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=60)


def _dashboard_answers(url: str) -> bool:
    try:
        return requests.get(url + "/", timeout=5).status_code == 200
    except requests.RequestException:
        return False


# -- ports -----------------------------------------------------------------------------------


def test_a_port_whose_connections_linger_in_time_wait_counts_as_free():
    # Given a server port that served a connection and was closed first by the server
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        # While it listens, the port is not free
        assert not port_is_free(port)
        conn.close()  # the server side closes first: its end lingers in TIME_WAIT
        client.close()
    # Then it is free again at once, as it is for a server that binds with SO_REUSEADDR
    assert port_is_free(port)


# -- the supervisor ----------------------------------------------------------------------------


def test_a_child_that_keeps_dying_is_given_up_with_its_last_output_lines(tmp_path):
    # Given a supervisor with a quick restart policy and a child that dies after half a second
    output = tmp_path / "console.log"
    script = "import sys, time; print('attempt to serve', flush=True); time.sleep(0.5); sys.exit(3)"
    with open(output, "wb") as console:
        sup = Supervisor(output=console, echo=False, log_dir=tmp_path / "logs",
                         policy=RestartPolicy(first_delay=0.05, max_restarts=3, window=60))
        try:
            sup.start(ChildSpec("flaky", [sys.executable, "-c", script]))
            # When it is watched
            dead = sup.watch()
        finally:
            sup.stop_all()
    # Then it was restarted three times, then given up, with its output kept
    text = output.read_text()
    assert dead is not None and dead.name == "flaky"
    assert text.count("flaky: exited with code 3: restarting in") == 3
    assert "flaky: exited with code 3, 3 restarts within 60 s: giving up" in text
    assert list(dead.lines)[-1] == "attempt to serve"
    assert (tmp_path / "logs" / "flaky.log").read_text().count("attempt to serve") == 4
    # and the console got state lines only, not the child's output
    assert "attempt to serve" not in text


# -- jobqueue up -------------------------------------------------------------------------------


@pytest.mark.slow
def test_up_again_within_2_s_of_a_sigint_serves_on_the_same_ports_and_keeps_queued_jobs(tmp_path, machine_id):
    # Given `jobqueue up` with an embedded Redis, run from a folder (default data dir ./.jobqueue)
    broker = f"redis://127.0.0.1:{free_port()}/0"
    env = up_env(tmp_path, machine_id, broker)
    del env["JOBQUEUE_DATA_DIR"]
    ports = ("--comfyui-port", str(free_port()))
    first = UpProcess(env, tmp_path / "up1.log", *ports, cwd=tmp_path)
    second = None
    try:
        first.wait_up()
        dashboard = first.summary("monitor")
        assert _dashboard_answers(dashboard)
        # and a job queued for a GPU nobody serves yet, sent from a second shell that exports
        # nothing (it finds the broker through up's run file)
        shell = {k: v for k, v in env.items() if k != "JOBQUEUE_BROKER_URL"}
        sent = _cli(shell, tmp_path, "submit", "simulation", '{"steps": 1, "output": "kept"}', "--queue", "gpu9")
        assert sent.returncode == 0, sent.stderr
        job_id = sent.stdout.strip()
        # When up gets SIGINT, and is started again at once
        first.proc.send_signal(signal.SIGINT)
        assert first.proc.wait(timeout=60) == 0, first.output()[-3000:]
        stopped_at = time.monotonic()
        second = UpProcess(env, tmp_path / "up2.log", *ports, "-Q", "gpu0,gpu9", cwd=tmp_path)
        assert time.monotonic() - stopped_at < 2.0
        second.wait_up()
        # Then it serves the dashboard on the same ports, the broker and simulator too
        for name in ("broker", "comfyui-sim", "monitor"):
            assert second.summary(name) == first.summary(name)
        assert first.summary("broker") == broker
        assert _dashboard_answers(second.summary("monitor"))
        # and the job queued before the restart was kept, and runs now
        def completed() -> dict | None:
            done = _cli(shell, tmp_path, "status", job_id)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            return report if report["status"] == "completed" else None

        assert wait_for(completed, 60, interval=0.3, what="the kept job")["result"]["output"] == "kept"
        # and the monitor's request log stays off the console and out of its log (no --debug)
        assert "GET / " not in first.output() + second.output()
        assert (tmp_path / ".jobqueue" / "logs" / "monitor.log").exists()
        assert "GET / " not in (tmp_path / ".jobqueue" / "logs" / "monitor.log").read_text()
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()


@pytest.mark.slow
def test_sigkill_of_up_leaves_no_process_within_5_s_and_the_next_up_starts_clean(tmp_path, machine_id):
    # Given `jobqueue up` with every child (embedded Redis, simulator, worker, monitor)
    env = up_env(tmp_path, machine_id, f"redis://127.0.0.1:{free_port()}/0")
    ports = ("--comfyui-port", str(free_port()))
    first = UpProcess(env, tmp_path / "up1.log", *ports)
    second = None
    try:
        first.wait_up()
        assert len(psutil.Process(first.proc.pid).children()) == 4
        # (without --debug the monitor is served by gunicorn)
        assert requests.get(first.summary("monitor") + "/healthz", timeout=5).headers["Server"].startswith("gunicorn")
        # (and theirs: the monitor's gunicorn runs a worker process of its own)
        children = psutil.Process(first.proc.pid).children(recursive=True)
        # When up itself is SIGKILLed (no chance to clean up)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        # Then every child is gone within 5 s
        wait_for(lambda: alive(children) == [], 5, interval=0.05, what="up's children to die with it")
        # and a second up finds no leftovers: same ports, all running
        second = UpProcess(env, tmp_path / "up2.log", *ports, "--debug")
        second.wait_up()
        for name in ("broker", "comfyui-sim", "monitor"):
            assert second.summary(name) == first.summary(name)
        assert "another jobqueue up" not in second.output()
        # (with --debug, children's output and the request log reach the console)
        assert _dashboard_answers(second.summary("monitor"))
        assert requests.get(second.summary("monitor") + "/healthz", timeout=5).headers["Server"].startswith("Werkzeug")
        wait_for(lambda: "monitor | " in second.output() and "GET / " in second.output(), 10,
                 what="the request log on the console")
    finally:
        first.cleanup()
        if second is not None:
            second.cleanup()


@pytest.mark.slow
def test_a_second_up_on_the_same_data_dir_refuses_before_starting_anything(tmp_path, machine_id, redis_url):
    # Given a running `jobqueue up`
    env = up_env(tmp_path, machine_id, redis_url)
    first = UpProcess(env, tmp_path / "up1.log", "--no-comfyui-sim", "--no-monitor")
    try:
        first.wait_up()
        # When a second one starts with the same data directory
        second = subprocess.run([sys.executable, "-m", "jobqueue.cli", "up", "--no-comfyui-sim"], env=env,
                                capture_output=True, text=True, timeout=60)
        # Then it refuses at once, naming the first, and starts nothing
        assert second.returncode == 1
        assert f"another jobqueue up (pid {first.proc.pid}) is running" in second.stdout
        assert "starting" not in second.stdout
    finally:
        first.cleanup()


def test_a_busy_monitor_port_is_refused_before_anything_starts(tmp_path, machine_id):
    # Given a broker URL nobody answers (up would start an embedded Redis) and a monitor port in use
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = f"redis://127.0.0.1:{free_port()}/0"
        env = up_env(tmp_path, machine_id, broker, JOBQUEUE_MONITOR_PORT=str(port))
        # When `jobqueue up` starts
        run = subprocess.run([sys.executable, "-m", "jobqueue.cli", "up"], env=env, capture_output=True, text=True,
                             timeout=60)
    # Then it refuses, naming the port, before starting the broker or anything else
    assert run.returncode == 1
    assert f"monitor port 127.0.0.1:{port} is in use" in run.stdout + run.stderr
    assert "starting" not in run.stdout and "embedded Redis" not in run.stdout
    assert not (tmp_path / "data" / "redis").exists() or not any((tmp_path / "data" / "redis").iterdir())


@pytest.mark.slow
def test_a_simulator_killed_under_up_comes_back_and_the_job_in_flight_completes(tmp_path, machine_id,
                                                                               redis_url, app):
    # Given `jobqueue up` with the simulator, and a ComfyUI job running on it
    env = up_env(tmp_path, machine_id, redis_url, JOBQUEUE_HEALTH_INTERVAL="1")
    up = UpProcess(env, tmp_path / "up.log", "--comfyui-port", str(free_port()), "--no-monitor")
    try:
        up.wait_up()
        simulator = up.child("comfyui-sim")
        job = submit_job("comfyui", {"workflow": SLOW_WORKFLOW}, app=app)
        wait_for(lambda: get_job(job.id, app=app).progress()["percent"] > 0, 60, interval=0.1,
                 what="the job to make progress")
        # When the simulator is SIGKILLed mid-job
        os.kill(simulator.pid, signal.SIGKILL)
        # Then up starts it again on the same port
        wait_for(lambda: "comfyui-sim: running again" in up.output(), 60, interval=0.2,
                 what="the simulator's restart")
        assert up.child("comfyui-sim").pid != simulator.pid
        # and the job completes, with its image
        result = job.wait(timeout=120)
        assert job.status() == JobStatus.COMPLETED
        assert [Path(f["path"]).exists() for f in result["files"]] == [True]
        assert up.proc.poll() is None
    finally:
        up.cleanup()


# -- the simulator's temporary folders ---------------------------------------------------------


def _start_simulator() -> tuple[subprocess.Popen[bytes], Path]:
    proc = subprocess.Popen([sys.executable, "-m", "jobqueue.sims.comfyui", "--port", "0", "--announce"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, Path(info["output_dir"]).parent


def test_the_simulator_removes_its_temp_dir_and_those_of_dead_simulators():
    # Given a simulator that made its own temporary folder
    first, first_dir = _start_simulator()
    second = None
    try:
        assert first_dir.is_dir() and first_dir.parent == Path(tempfile.gettempdir())
        # When it is SIGKILLed, its folder stays behind
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert first_dir.exists()
        # Then the next simulator removes it when it starts
        second, second_dir = _start_simulator()
        assert not first_dir.exists()
        # and removes its own when it stops
        os.killpg(second.pid, signal.SIGTERM)
        assert second.wait(timeout=10) == 0
        assert not second_dir.exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


def test_a_component_that_cannot_run_names_the_extra_that_brings_it():
    from jobqueue.up.runner import install_hint

    assert "pip install 'jobqueue[monitor]'" in install_hint("monitor")
    assert "pip install 'jobqueue[comfyui-sim]'" in install_hint("comfyui-sim")
    assert "'jobqueue[up]'" in install_hint("monitor")
