"""Monitor fixtures: a fresh store per test (temporary SQLite file, or a PostgreSQL database
of its own), a fresh Flask app on it, and real monitor processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.up.embedded import free_port
from jobqueue.up.procs import ChildProcess, monitor_command
from monitor.ingest.hub import ChangeHub
from monitor.store import Store
from tests.helpers import ROOT

PG_ADMIN_URL = os.environ.get("JOBQUEUE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database created for this test and dropped after it."""
    import psycopg

    name = f"jobqueue_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url, keep_jobs=1000, keep_seconds=3600.0, changes_keep=1000)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'monitor.db'}")
    yield s
    s.close()


@pytest.fixture
def hub() -> ChangeHub:
    return ChangeHub()


@pytest.fixture
def monitor_settings(tmp_path: Path) -> Settings:
    """Settings of a monitor app with no broker work (unit level)."""
    return Settings(monitor_db=f"sqlite:///{tmp_path / 'app.db'}", broker_url="redis://127.0.0.1:6379/14",
                    monitor_token="secret-token", monitor_public_read=True).resolved()


@pytest.fixture
def flask_app(monitor_settings: Settings) -> Iterator[Any]:
    from monitor.app import create_app

    application = create_app(monitor_settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["jobqueue_monitor"].close()


@pytest.fixture
def client(flask_app: Any) -> Any:
    return flask_app.test_client()


# -- real monitor processes ----------------------------------------------------------------

TIMESTAMP_FIELDS = {
    "seq", "heartbeat_at", "heartbeat_age", "updated_at", "last_seen", "submitted_at", "received_at",
    "started_at", "finished_at", "runtime", "online_at", "loadavg", "eta_seconds", "queue_position",
    "celery_processed", "eta_at", "active", "pid", "freq", "sw_ver",
}


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A state with receipt timestamps and other per-receipt facts (heartbeat counters, ETAs)
    removed, jobs sorted by id: what two monitors must agree on."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMESTAMP_FIELDS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {
        "machines": strip(state["machines"]),
        "workers": strip(state["workers"]),
        "jobs": sorted(strip(state["jobs"]), key=lambda j: j["id"]),
    }


class MonitorProcess(ChildProcess):
    """A real ``jobqueue monitor`` subprocess on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(monitor_command(self.port), env, log_path, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MonitorProcess:
        super().start()
        return self

    def get(self, path: str, **kwargs: Any) -> Any:
        import requests

        return requests.get(self.url + path, timeout=5, **kwargs)

    def state(self) -> dict[str, Any]:
        response = self.get("/api/state?finished_limit=10000")
        response.raise_for_status()
        return dict(response.json())

    def health(self) -> dict[str, Any] | None:
        import requests

        try:
            return dict(self.get("/healthz").json())
        except (requests.RequestException, ValueError):
            return None

    def wait_ready(self, timeout: float = 30.0) -> MonitorProcess:
        """Until it serves, its collector listens and its first truth repair is done."""
        from tests.helpers import wait_for

        def ready() -> bool:
            code = self.exited_with()
            if code is not None:
                raise AssertionError(f"monitor exited {code}: {self.log_text()[-3000:]}")
            health = self.health()
            return bool(health and health["collector"]["connected"] and (health["repair"] or {}).get("runs", 0) >= 1)

        wait_for(ready, timeout, interval=0.1, what="monitor to be ready")
        return self

    def kill(self, sig: int | None = None) -> None:
        """Send ``sig`` (SIGKILL by default) to the monitor's process group and wait for it."""
        import signal

        self.signal(sig or signal.SIGKILL)


@pytest.fixture
def start_monitor(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_monitor(db_name="m.db", wait=True, **env)`` starts a real monitor
    process on the test's Redis and a SQLite file of ``tmp_path``; all are stopped at the end."""
    from tests.conftest import settings_env
    from tests.helpers import child_env

    monitors: list[MonitorProcess] = []

    def start(db_name: str = "monitor.db", wait: bool = True, port: int | None = None, **env: str) -> MonitorProcess:
        base = settings_env(settings)
        base["JOBQUEUE_MONITOR_DB"] = f"sqlite:///{tmp_path / db_name}"
        base.update({k if k.startswith("JOBQUEUE_") else "JOBQUEUE_" + k.upper(): str(v) for k, v in env.items()})
        monitor = MonitorProcess(child_env(base), tmp_path / f"monitor-{len(monitors)}.log", port=port)
        monitors.append(monitor.start())
        if wait:
            monitor.wait_ready()
        return monitor

    yield start
    for monitor in monitors:
        monitor.stop()
