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
