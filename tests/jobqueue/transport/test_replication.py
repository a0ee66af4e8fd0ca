"""Redis ``WAIT`` on a master with fewer replicas than asked for: writes go on, warned (the
promoted replica right after a failover has none), never refused (real Redis, no replica)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.transport import replication
from jobqueue.transport.app import create_app
from tests.helpers import quick


def test_a_master_without_replicas_takes_submits_and_says_they_are_unprotected(
        settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    # Given a client asking for one replica from a Redis that has none
    app: Any = create_app(settings.model_copy(update={"redis_wait_replicas": 1, "redis_wait_timeout": 0.2}))
    assert replication.connected_replicas(redis_client) == 0
    before = redis_client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    # When a job is submitted
    with caplog.at_level(logging.WARNING, logger="jobqueue.transport.replication"):
        handle = submit_job("simulation", quick("unprotected"), app=app)
    # Then it is queued, a WAIT for the replicas there are (none) went with it, and the log says so
    assert handle.status().value == "queued"
    assert redis_client.info("commandstats")["cmdstat_wait"]["calls"] > before
    assert "0 replica(s) connected, 1 asked for" in caplog.text
    app.close()
