"""A plain Celery app that imports nothing of jobqueue, and a real worker of it (threads pool):
what a Flower user points the monitor at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PLAIN_APP = """
from celery import Celery

app = Celery("plain", broker="{broker}", backend="{broker}")
app.conf.worker_send_task_events = True
app.conf.task_send_sent_event = True


@app.task(name="plain.add")
def add(x, y):
    return x + y


@app.task(name="plain.boom")
def boom():
    raise ValueError("boom")


@app.task(name="plain.mul")
def mul(x, y, password=None):
    return x * y


@app.task(name="plain.tsum")
def tsum(values):
    return sum(values)


@app.task(name="plain.slow")
def slow(value, seconds):
    import time
    time.sleep(seconds)
    return value
"""


@contextmanager
def plain_worker_process(tmp_path: Path, redis_url: str, *, pool: str = "threads", concurrency: int = 2,
                         node: str = "plain@box-p") -> Iterator[Any]:
    """A worker of a plain Celery app that imports nothing of jobqueue; yields the app."""
    (tmp_path / "plainapp.py").write_text(textwrap.dedent(PLAIN_APP.format(broker=redis_url)))
    log = (tmp_path / "plain-worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "plainapp", "worker", "-P", pool, "-c",
                             str(concurrency), "-n", node, "--without-mingle", "--without-gossip", "-l", "info"],
                            cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sys.path.insert(0, str(tmp_path))
    try:
        import plainapp  # type: ignore[import-not-found]

        yield plainapp.app
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("plainapp", None)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


@pytest.fixture
def plain_worker(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    """A worker of a plain Celery app that imports nothing of jobqueue (threads pool)."""
    with plain_worker_process(tmp_path, redis_url) as app:
        yield app


@contextmanager
def flower_like_monitor(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[str, Any]]:
    """``jobqueue monitor ARGS...`` (e.g. ``--broker URL --url-prefix /flower``) as a Flower user
    starts it: no ``JOBQUEUE_*`` broker or backend variable, only ``env`` (its store, a token...).
    Yields its root URL (with the prefix, when ``--url-prefix`` is among ``args``) and the process."""
    import requests

    from jobqueue.up.embedded import free_port
    from jobqueue.up.procs import ChildProcess, monitor_command
    from tests.helpers import ROOT, child_env, wait_for

    port = free_port()
    variables = {"JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'flower-like.db'}",
                 "JOBQUEUE_DATA_DIR": str(tmp_path / "no-up-here"), **env}
    assert not any(name.startswith(("JOBQUEUE_BROKER", "JOBQUEUE_RESULT")) for name in variables)
    prefix = args[args.index("--url-prefix") + 1].rstrip("/") if "--url-prefix" in args else ""
    url = f"http://127.0.0.1:{port}{prefix}"
    proc = ChildProcess([*monitor_command(port), *args], child_env(variables), tmp_path / "flower-like.log", cwd=ROOT)
    proc.start()

    def healthy() -> bool:
        if proc.exited_with() is not None:
            raise AssertionError(f"the monitor exited: {(tmp_path / 'flower-like.log').read_text()[-3000:]}")
        try:
            return requests.get(url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 60, interval=0.2, what=f"jobqueue monitor on {url}")
        yield url, proc
    finally:
        proc.stop()
