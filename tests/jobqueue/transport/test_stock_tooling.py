"""Stock Celery tooling works against a jobqueue fleet.

``celery -b URL inspect ...``, ``celery -b URL status``, ``celery -b URL purge`` and Flower
started with only ``--broker`` run here as a user would run them: no ``-A jobqueue``, no
``JOBQUEUE_*`` variables, no project on ``PYTHONPATH``, in a directory without the project's
``celeryconfig``. They use kombu's defaults, so the worker's transport options must agree with
those defaults (no custom key separator), and the worker must log no control-command error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue import submit_job
from jobqueue.transport.internals import redis_queue_keys
from tests.helpers import stop_process_group, wait_for

#: Names in a worker log that mean a control command broke (what a custom "sep" caused).
CONTROL_ERRORS = ("Traceback", "not enough values to unpack", "Control command error")


def stock_env(tmp_path: Path) -> dict[str, str]:
    """An environment without any of the project's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBQUEUE_", "CELERY_", "FLOWER_")) and k != "PYTHONPATH"}
    env["HOME"] = str(tmp_path)
    return env


def stock_celery(tmp_path: Path, broker_url: str, *args: str, timeout: float = 60.0) -> str:
    """Run ``celery -b broker_url <args>`` in a bare environment; return its output."""
    proc = subprocess.run([sys.executable, "-m", "celery", "-b", broker_url, *args],
                          cwd=str(tmp_path), env=stock_env(tmp_path), capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"celery {' '.join(args)} exited {proc.returncode}: {output}"
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stock_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


@pytest.fixture
def flower(stock_dir: Path, redis_url: str) -> Iterator[str]:
    """Flower started the usual way, with only ``--broker``; yields its base URL."""
    port = free_port()
    env = stock_env(stock_dir)
    env["FLOWER_UNAUTHENTICATED_API"] = "true"
    log = open(stock_dir / "flower.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "--broker", redis_url, "flower",
                             "--address=127.0.0.1", f"--port={port}"],
                            cwd=str(stock_dir), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)
        log.close()


def test_stock_inspect_and_status_get_replies_from_the_worker(start_worker: Any, redis_url: str,
                                                              stock_dir: Path) -> None:
    # Given a jobqueue worker
    worker = start_worker("gpu0")
    node = worker.node_name
    # When stock celery asks it, from an environment without the project's settings
    ping = stock_celery(stock_dir, redis_url, "inspect", "ping", "--timeout", "5")
    active = stock_celery(stock_dir, redis_url, "inspect", "active", "--timeout", "5", "--json")
    stats = stock_celery(stock_dir, redis_url, "inspect", "stats", "--timeout", "5", "--json")
    status = stock_celery(stock_dir, redis_url, "status", "--timeout", "5")
    # Then every command got the worker's reply
    assert node in ping and "pong" in ping
    assert json.loads(active.strip().splitlines()[-1]) == {node: []}
    assert json.loads(stats.strip().splitlines()[-1])[node]["pool"]["max-concurrency"] == 1
    assert node in status and "1 node online" in status
    # And the worker logged no control-command error
    log = worker.log_text()
    assert not [marker for marker in CONTROL_ERRORS if marker in log], log[-3000:]


def test_stock_purge_empties_a_queue_of_default_priority_jobs(app: Any, redis_client: Any, redis_url: str,
                                                              stock_dir: Path) -> None:
    # Given two waiting jobs of the default priority on a queue nobody consumes
    for _ in range(2):
        submit_job("simulation", {"steps": 1, "step_seconds": 0.05}, queue="gpu7", app=app)
    waiting = sum(redis_client.llen(key) for key in redis_queue_keys("gpu7"))
    assert waiting == 2
    # When stock celery purges that queue
    output = stock_celery(stock_dir, redis_url, "purge", "-f", "-Q", "gpu7")
    # Then both messages are gone
    assert "Purged 2 messages" in output
    assert sum(redis_client.llen(key) for key in redis_queue_keys("gpu7")) == 0


def test_flower_started_with_only_a_broker_lists_the_workers_registered_tasks(
        start_worker: Any, flower: str) -> None:
    # Given a jobqueue worker and Flower started with only --broker
    worker = start_worker("gpu0")

    # When Flower's API is asked for the workers (refresh: Flower inspects them)
    def registered() -> list[str]:
        try:
            reply = requests.get(f"{flower}/api/workers", params={"refresh": "1"}, timeout=10)
        except requests.ConnectionError:
            return []
        if reply.status_code != 200:
            return []
        return list(reply.json().get(worker.node_name, {}).get("registered", []))

    tasks = wait_for(registered, 60, interval=0.5, what="Flower to list the worker's tasks")
    # Then it lists the job task, and the worker logged no control-command error
    assert "jobqueue.run_job" in tasks
    log = worker.log_text()
    assert not [marker for marker in CONTROL_ERRORS if marker in log], log[-3000:]
