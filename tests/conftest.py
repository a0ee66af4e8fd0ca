"""Fixtures shared by every test package: a Redis database of the test's own, settings, app,
and real worker processes.

Redis: ``JOBQUEUE_TEST_REDIS_HOST``:``JOBQUEUE_TEST_REDIS_PORT`` (default 127.0.0.1:6379), database
``JOBQUEUE_TEST_REDIS_DB`` (default 1), flushed before and after each test. Integration tests
*fail* (never skip) when Redis is missing in CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobqueue.config import Settings
from jobqueue.transport.app import create_app
from tests.helpers import WorkerProcess, child_env

REDIS_HOST = os.environ.get("JOBQUEUE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("JOBQUEUE_TEST_REDIS_PORT", "6379"))
#: pytest-xdist's worker number (0 without xdist): each parallel worker gets a Redis database
#: of its own, ``JOBQUEUE_TEST_REDIS_DB`` + that number.
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = int(os.environ.get("JOBQUEUE_TEST_REDIS_DB", "1")) + XDIST_WORKER
RABBITMQ_URL = os.environ.get("JOBQUEUE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


#: Tests that share something beyond a Redis database (RabbitMQ's vhost and service queues,
#: network namespaces, fixed ports) run in one xdist group, one after another on one worker
#: (``-n 2 --dist loadgroup``, as .ci/run runs the suite).
SERIAL_MARKERS = ("rabbitmq", "serial")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in SERIAL_MARKERS):
            item.add_marker(pytest.mark.xdist_group("serial"))
        if _uses_hypothesis(item) and not item.get_closest_marker("timeout"):
            # pytest-timeout's default (one SIGALRM) fails a hung example once; hypothesis then
            # replays that example to report it and the run hangs for good. The thread method
            # ends the process instead: a hang becomes a crashed test, never a stuck CI run.
            item.add_marker(pytest.mark.timeout(config.getini("timeout") or 300, method="thread"))


def _uses_hypothesis(item: pytest.Item) -> bool:
    """True when the test's module imports anything from hypothesis (given, settings...)."""
    module = getattr(item, "module", None)
    return module is not None and any(
        getattr(value, "__module__", "").startswith("hypothesis") for value in vars(module).values())


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of a flushed Redis database for this test."""
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis is not reachable at {url}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def machine_id() -> str:
    """A machine id unique to the test, so concurrent runs never share node names."""
    return f"m{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(redis_url: str, machine_id: str, tmp_path: Path) -> Settings:
    """Settings tuned for fast tests (short lease and visibility timeout)."""
    return Settings(
        broker_url=redis_url,
        result_backend=redis_url,
        machine_id=machine_id,
        visibility_timeout=6.0,
        lease_interval=1.0,
        health_interval=1.0,
        status_beat=3.0,
        heartbeat_interval=1.0,
        output_dir=str(tmp_path / "outputs"),
        monitor_db=f"sqlite:///{tmp_path / 'monitor.db'}",
    ).resolved()


def settings_env(settings: Settings) -> dict[str, str]:
    """The JOBQUEUE_* variables that reproduce ``settings`` in a child process."""
    return settings.to_env()


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    """A Celery app on the test's Redis database."""
    application = create_app(settings)
    yield application
    application.close()


@pytest.fixture
def start_worker(settings: Settings, app: Any, tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_worker(queues="gpu0", **env_overrides)`` starts a real worker process
    and waits until it answers a ping. Every worker is stopped at the end of the test."""
    workers: list[WorkerProcess] = []

    def start(queues: str = "gpu0", wait: bool = True, extra_args: tuple[str, ...] = (), **env: str) -> WorkerProcess:
        base = settings_env(settings)
        base.update({k if k.startswith("JOBQUEUE_") else "JOBQUEUE_" + k.upper(): str(v) for k, v in env.items()})
        log_path = tmp_path / f"worker-{len(workers)}-{queues.replace(',', '_')}.log"
        worker = WorkerProcess(child_env(base), queues=queues, log_path=log_path, extra_args=extra_args)
        workers.append(worker.start())
        if wait:
            worker.wait_ready(app)
        return worker

    yield start
    for worker in workers:
        worker.stop()
