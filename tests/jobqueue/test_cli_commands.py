"""The everyday commands, run as an operator runs them (``jobqueue ...`` subprocesses) against
real Redis, real workers, a real ComfyUI simulator and a real monitor: submit a "Save (API)"
workflow file, ``@file`` and stdin payloads, cancel, list jobs, see the fleet, fetch outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobqueue import get_job, submit_job
from jobqueue.states import JobStatus
from tests.capability_fixtures import comfy_worker, start_sim  # noqa: F401 (fixture)
from tests.conftest import settings_env
from tests.helpers import ROOT, child_env, wait_for
from tests.jobqueue.comfyui_fixtures import slow
from tests.monitor.conftest import start_monitor  # noqa: F401 (fixture)


@pytest.fixture
def cli(settings):
    """``cli(*args, stdin=None, **env)``: run ``jobqueue ARGS`` as a subprocess with the test's settings."""

    def run(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        full = child_env(settings_env(settings), **env)
        return subprocess.run([sys.executable, "-m", "jobqueue.cli", *args], cwd=str(ROOT), env=full, input=stdin,
                              capture_output=True, text=True, timeout=120)

    return run


def test_a_comfyui_workflow_file_runs_and_its_outputs_are_downloaded(
        cli, app, start_worker, start_sim, machine_id, tmp_path):  # noqa: F811 (fixture)
    # Given a ComfyUI worker, and a workflow saved with "Save (API)"
    comfy_worker(start_worker, machine_id, "a", start_sim())
    saved = tmp_path / "my_workflow_api.json"
    saved.write_text(json.dumps(slow(2, 0.05), indent=2))
    # When it is submitted with --workflow and waited for
    done = cli("submit", "comfyui", "--workflow", str(saved), "--wait")
    # Then it ran; and `outputs` copies its image from the output store into the folder asked
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    fetched = cli("outputs", result["job_id"], "-o", str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stderr
    paths = [Path(line) for line in fetched.stdout.split()]
    assert [p.name for p in paths] == sorted(f["name"] for f in result["files"]) and paths
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_payloads_come_from_a_file_or_stdin_and_bad_ones_are_usage_errors(cli, app, tmp_path, redis_client):
    payload = tmp_path / "job.json"
    payload.write_text('{"steps": 1, "step_seconds": 0.05, "output": "from-file"}')
    # A payload from @file and from stdin is submitted as it is
    from_file = cli("submit", "simulation", f"@{payload}", "--queue", "gpu7")
    from_stdin = cli("submit", "simulation", "-", "--queue", "gpu7", stdin='{"steps": 1, "output": "piped"}')
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_file.stderr + from_stdin.stderr
    assert get_job(from_file.stdout.strip(), app=app).status() == JobStatus.QUEUED
    # A file that is not JSON, a missing file, a UI-format workflow: clear errors, nothing enqueued
    before = redis_client.dbsize()
    (tmp_path / "notes.txt").write_text("steps: 3")
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    for args, code, words in [
        (("simulation", f"@{tmp_path / 'notes.txt'}"), 2, "is not valid JSON"),
        (("simulation", f"@{tmp_path / 'missing.json'}"), 2, "no such file"),
        (("comfyui", "--workflow", str(tmp_path / "missing.json")), 2, "no such file"),
        (("comfyui", "--workflow", str(tmp_path / "ui.json")), 1, "Save (API)"),
        (("simulation",), 2, "give the payload"),
    ]:
        outcome = cli("submit", *args)
        assert (outcome.returncode, words in outcome.stderr) == (code, True), (args, outcome.stderr)
        assert "Traceback" not in outcome.stderr
    assert redis_client.dbsize() == before


def test_a_submit_over_the_queue_cap_exits_1_saying_so(cli, redis_client):
    first = cli("submit", "simulation", '{"steps": 1}', "--queue", "gpu7", JOBQUEUE_MAX_QUEUED="1")
    assert first.returncode == 0, first.stderr
    over = cli("submit", "simulation", '{"steps": 1}', "--queue", "gpu7", JOBQUEUE_MAX_QUEUED="1")
    assert over.returncode == 1 and "simulation: queue full (1 queued, cap 1)" in over.stderr
    zero = cli("submit", "simulation", '{"steps": 1}', JOBQUEUE_MAX_QUEUED="0")
    assert zero.returncode == 1 and "JOBQUEUE_MAX_QUEUED must be >= 1" in zero.stderr


def test_cancel_stops_a_queued_job_and_refuses_unknown_and_ended_ones(cli, app):
    job = submit_job("simulation", {"steps": 1}, queue="gpu7", app=app)
    cancelled = cli("cancel", job.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert job.status() == JobStatus.CANCELLED
    again = cli("cancel", job.id)
    assert again.returncode == 1 and "already ended (cancelled)" in again.stderr
    unknown = cli("cancel", "0b7f3c1e-never-submitted")
    assert unknown.returncode == 1 and "job 0b7f3c1e-never-submitted is unknown" in unknown.stderr


def test_jobs_and_workers_show_the_fleet_from_the_monitor_or_the_broker(
        cli, app, start_worker, start_monitor):  # noqa: F811 (fixture)
    # Given a worker, a monitor, a completed job and one queued where nobody consumes
    worker = start_worker("gpu0")
    monitor = start_monitor()
    done = submit_job("simulation", {"steps": 1, "step_seconds": 0.05, "output": 1}, app=app)
    done.wait(timeout=30)
    waiting = submit_job("simulation", {"steps": 1}, queue="gpu7", app=app)
    at = {"JOBQUEUE_MONITOR_URL": monitor.url}
    # When the queued jobs are listed (as JSON, and as a table)
    listed = wait_for(lambda: json.loads(cli("jobs", "--status", "queued", "--json", **at).stdout) or None, 20,
                      interval=0.3, what="the monitor to list the queued job")
    assert [j["id"] for j in listed] == [waiting.id]
    table = cli("jobs", "--service", "simulation", "--limit", "5", **at)
    assert table.returncode == 0 and done.id in table.stdout and waiting.id in table.stdout
    # Then the fleet shows the worker with its connector badge, from the monitor and from the broker
    from_monitor = cli("workers", **at)
    from_broker = cli("workers")
    for shown in (from_monitor, from_broker):
        assert shown.returncode == 0, shown.stderr
        assert worker.node_name in shown.stdout and "simulation:idle" in shown.stdout
    # And a monitor that does not answer, or a bad status, is a clean error
    gone = cli("jobs", JOBQUEUE_MONITOR_URL="http://127.0.0.1:9")
    assert gone.returncode == 1 and "does not answer" in gone.stderr
    bad = cli("jobs", "--status", "sleeping", **at)
    assert bad.returncode == 2 and "'sleeping' is not one of" in bad.stderr


def test_outputs_of_a_job_without_files_exits_1(cli, app, tmp_path):
    outcome = cli("outputs", "0b7f3c1e-no-files", "-o", str(tmp_path / "none"))
    assert outcome.returncode == 1 and "has no files in the output store" in outcome.stderr


def test_the_worker_takes_exit_when_idle_and_the_new_commands_are_listed(cli):
    listed = cli("--help").stdout
    assert all(name in listed for name in ("cancel", "jobs", "workers", "outputs"))
    bad = cli("worker", "--exit-when-idle", "-3")
    assert bad.returncode == 2 and "--exit-when-idle" in bad.stderr


def test_jobs_and_workers_send_the_api_key_to_a_monitor_with_auth_on(cli, start_monitor):  # noqa: F811 (fixture)
    # Given a monitor with a token, and a viewer API key made with it
    import requests

    monitor = start_monitor(MONITOR_TOKEN="cli-token")
    made = requests.post(monitor.url + "/api/keys", json={"role": "viewer", "name": "cli"}, timeout=10,
                         headers={"Authorization": "Bearer cli-token"})
    assert made.status_code == 201, made.text
    at = {"JOBQUEUE_MONITOR_URL": monitor.url}
    # When the CLI asks without credentials, then the monitor's 401 is a clean error
    refused = cli("jobs", **at)
    assert refused.returncode == 1 and "401" in refused.stderr
    # And with the key (JOBQUEUE_MONITOR_API_KEY) both commands answer
    for command in ("jobs", "workers"):
        shown = cli(command, "--json", JOBQUEUE_MONITOR_API_KEY=made.json()["key"], **at)
        assert shown.returncode == 0, shown.stderr
        assert isinstance(json.loads(shown.stdout), list)
