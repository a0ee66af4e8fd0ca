"""The ``jobqueue`` CLI against a real Redis database and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from jobqueue.cli import main
from jobqueue.up.embedded import free_port
from tests.conftest import settings_env
from tests.helpers import ROOT, wait_for


@pytest.fixture
def run_cli(settings):
    """Run ``jobqueue ARGS...`` in-process with the test's settings as its environment."""
    runner = CliRunner()
    env = settings_env(settings)

    def run(*args: str, **extra_env: str):
        return runner.invoke(main, list(args), env={**env, **extra_env}, catch_exceptions=False)

    return run


def test_submit_wait_prints_the_job_id_and_then_the_result_as_json(run_cli, start_worker):
    # Given a real worker
    worker = start_worker("gpu0")
    # When a job is submitted with --wait
    outcome = run_cli("submit", "simulation", '{"steps": 3, "step_seconds": 0.1, "output": "cli"}', "--wait")
    # Then it exits 0, the id went to stderr, the result JSON to stdout
    assert outcome.exit_code == 0, outcome.output
    result = json.loads(outcome.stdout)
    assert result["output"] == "cli"
    assert result["worker"] == worker.node_name
    assert f"job {result['job_id']}" in outcome.stderr


def test_submit_prints_the_id_and_status_follows_the_job_to_its_result(run_cli, start_worker):
    start_worker("gpu0")
    # Given a job submitted without waiting
    submitted = run_cli("submit", "simulation", '{"steps": 2, "step_seconds": 0.1, "output": 7}',
                        "--priority", "9")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert len(job_id) == 36
    # When its status is asked until it ends
    def completed() -> dict | None:
        report = json.loads(run_cli("status", job_id).stdout)
        return report if report["status"] == "completed" else None

    report = wait_for(completed, 30, interval=0.2, what="status to say completed")
    # Then it shows the result and full progress
    assert report["id"] == job_id
    assert report["result"]["output"] == 7
    assert report["progress"]["percent"] == 100.0


def test_a_failed_job_exits_non_zero_with_the_connectors_error(run_cli, start_worker):
    start_worker("gpu0")
    outcome = run_cli("submit", "simulation", '{"steps": 3, "step_seconds": 0.05, "fail_at_step": 2}', "--wait")
    assert outcome.exit_code == 1
    assert "simulated failure at step 2" in outcome.stderr
    job_id = outcome.stderr.split()[1]
    report = json.loads(run_cli("status", job_id).stdout)
    assert report["status"] == "failed"
    assert report["error"]["message"] == "simulated failure at step 2"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("simulation", "{steps: 3}"), 2, "not valid JSON"),
        (("simulation", "[1, 2]"), 2, "must be a JSON object"),
        (("dreamer", '{"steps": 1}'), 1, "unknown service"),
        (("simulation", '{"steps": -4}'), 1, "'steps'"),
        (("simulation", '{"steps": 1}', "--priority", "42"), 1, "priority"),
    ],
)
def test_bad_input_is_a_clean_error_and_enqueues_nothing(run_cli, redis_client, args, code, words):
    # When the CLI gets something it cannot submit
    outcome = run_cli("submit", *args)
    # Then it exits with a one-line error, no traceback, and Redis holds nothing
    assert outcome.exit_code == code
    assert words in outcome.stderr
    assert "Traceback" not in outcome.output
    assert redis_client.dbsize() == 0


def test_submit_to_a_broker_that_does_not_answer_says_so(run_cli):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    outcome = run_cli("submit", "simulation", '{"steps": 1}',
                      JOBQUEUE_BROKER_URL=dead, JOBQUEUE_RESULT_BACKEND=dead)
    assert outcome.exit_code == 1
    assert f"broker {dead} does not answer" in outcome.stderr


def test_a_bad_setting_is_a_clean_error(run_cli):
    outcome = run_cli("status", "some-id", JOBQUEUE_LEASE_INTERVAL="often")
    assert outcome.exit_code == 1
    assert "JOBQUEUE_LEASE_INTERVAL" in outcome.stderr


def test_the_cli_lists_its_commands():
    outcome = CliRunner().invoke(main, ["--help"])
    assert outcome.exit_code == 0
    for command in ("up", "submit", "status", "worker"):
        assert command in outcome.output


def test_the_worker_command_hands_its_arguments_to_celery():
    done = subprocess.run([sys.executable, "-m", "jobqueue.cli", "worker", "--help"], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "celery worker" in done.stdout and "--queues" in done.stdout


def test_status_of_an_id_never_submitted_exits_1_saying_the_job_is_unknown(run_cli):
    # Given an id nobody ever submitted
    # When its status is asked
    outcome = run_cli("status", "0b7f3c1e-never-submitted")
    # Then the command fails and says the job is unknown
    assert outcome.exit_code == 1
    assert "job 0b7f3c1e-never-submitted is unknown" in outcome.stderr
    assert outcome.stdout == ""


def test_status_of_a_job_waiting_for_a_worker_says_queued(run_cli):
    # Given a job submitted while no worker consumes its queue
    submitted = run_cli("submit", "simulation", '{"steps": 1}', "--queue", "gpu7")
    assert submitted.exit_code == 0, submitted.output
    # When its status is asked
    outcome = run_cli("status", submitted.stdout.strip())
    # Then it is queued, not unknown
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["status"] == "queued"
