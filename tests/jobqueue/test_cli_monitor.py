"""``jobqueue monitor --broker URL [--result-backend URL]``: the monitor run as Flower is, against a
plain Celery app whose worker imports nothing of jobqueue, with no ``JOBQUEUE_*`` broker variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import wait_for
from tests.monitor.plain_app import flower_like_monitor, plain_worker  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def task_row(url: str, task_id: str) -> dict[str, Any] | None:
    found = requests.get(f"{url}/api/jobs", params={"q": task_id, "limit": 5}, timeout=5).json()["jobs"]
    return next((job for job in found if job["id"] == task_id), None)


def test_a_monitor_started_with_only_broker_sees_a_plain_celery_apps_tasks_and_worker(
        plain_worker: Any, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    # Given a plain Celery app's worker, and a monitor started with nothing but --broker
    # (its result backend: the broker's Redis, as the app's)
    with flower_like_monitor(tmp_path, "--broker", redis_url, JOBQUEUE_MONITOR_PUBLIC_READ="1") as (url, _):
        wait_for(lambda: any(w["name"] == "plain@box-p" and w["status"] == "online"
                             for w in requests.get(url + "/api/workers", timeout=5).json()["workers"]),
                 30, what="the plain worker online on the monitor")
        # When the app runs a task and a failing one
        ok = plain_worker.send_task("plain.add", args=(2, 3))
        bad = plain_worker.send_task("plain.boom")
        assert ok.get(timeout=30) == 5
        # Then the monitor shows both with their names, states and results
        wait_for(lambda: (task_row(url, ok.id) or {}).get("status") == "completed", 30, what="plain.add completed")
        wait_for(lambda: (task_row(url, bad.id) or {}).get("status") == "failed", 30, what="plain.boom failed")
        done = task_row(url, ok.id)
        assert done is not None and done["name"] == "plain.add" and done["worker"] == "plain@box-p"
        assert done["result"] == 5


def test_the_command_lines_broker_backend_and_prefix_win_over_the_environment(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import monitor.server
    from jobqueue.cli import main

    # Given an environment naming another broker and backend (the server itself is a stub here:
    # the test above runs the real one)
    served: list[Any] = []
    monkeypatch.setattr(monitor.server, "serve", lambda settings, host, port, debug=False: served.append(settings))
    env = {"JOBQUEUE_BROKER_URL": "redis://127.0.0.1:1/0", "JOBQUEUE_RESULT_BACKEND": "redis://127.0.0.1:1/1",
           "JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'm.db'}"}
    # When the monitor is started with --broker, --result-backend and --url-prefix
    runner = CliRunner()
    result = runner.invoke(main, ["monitor", "--broker", redis_url, "--result-backend", "redis://127.0.0.1:6379/9",
                                  "--url-prefix", "/flower"], env=env)
    # Then it serves with those, not the environment's
    assert result.exit_code == 0, result.output
    assert [(s.broker_url, s.result_backend, s.monitor_url_prefix) for s in served] == [
        (redis_url, "redis://127.0.0.1:6379/9", "/flower")]
    # And --broker alone takes the broker's Redis as backend when the environment names none
    served.clear()
    runner.invoke(main, ["monitor", "--broker", redis_url], env={"JOBQUEUE_MONITOR_DB": env["JOBQUEUE_MONITOR_DB"]})
    assert [(s.broker_url, s.result_backend) for s in served] == [(redis_url, redis_url)]


def test_a_prefix_that_is_not_a_path_is_a_clean_error_naming_its_variable(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobqueue.cli import main

    bad = CliRunner().invoke(main, ["monitor", "--url-prefix", "/a b", "--port", "0"],
                             env={"JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'm.db'}"})
    assert bad.exit_code == 1 and "JOBQUEUE_MONITOR_URL_PREFIX" in bad.output


def test_the_commands_ask_the_local_monitor_under_its_prefix_and_an_explicit_url_as_given() -> None:
    from jobqueue.client.commands import monitor_url
    from jobqueue.config import Settings

    assert monitor_url(Settings(monitor_url_prefix="/flower/", monitor_port=5600)) == "http://127.0.0.1:5600/flower"
    assert monitor_url(Settings()) == "http://127.0.0.1:5555"
    assert monitor_url(Settings(monitor_url="http://m.example/ops/flower/", monitor_url_prefix="/flower")) == \
        "http://m.example/ops/flower"
