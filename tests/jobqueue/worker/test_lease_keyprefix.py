"""The lease renews the unacked index kombu really uses, also when the broker's keys carry a
``global_keyprefix`` (real Redis, a real worker started on such an app)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.transport.internals import unacked_index_key
from tests.conftest import settings_env
from tests.helpers import WorkerProcess, child_env, wait_for
from tests.jobqueue.prefixed_app import KEY_PREFIX, prefixed

pytestmark = pytest.mark.timeout(120)


class PrefixedWorker(WorkerProcess):
    """A real worker on :mod:`tests.jobqueue.prefixed_app` (broker keys behind a prefix)."""

    def __init__(self, env: dict[str, str], queues: str = "gpu0", log_path: Any = None) -> None:
        super().__init__(env, queues=queues, log_path=log_path)
        self.cmd[self.cmd.index("-A") + 1] = "tests.jobqueue.prefixed_app"


def test_a_job_longer_than_the_visibility_timeout_on_a_prefixed_broker_is_delivered_once(
        app: Any, settings: Settings, redis_client: redis.Redis, tmp_path: Any) -> None:
    # Given a worker whose broker keys carry a global_keyprefix, a 3 s visibility timeout and a 1 s lease
    prefixed(app)
    env = child_env({**settings_env(settings), "JOBQUEUE_VISIBILITY_TIMEOUT": "3", "JOBQUEUE_LEASE_INTERVAL": "1"})
    worker = PrefixedWorker(env, queues="gpu0", log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(app)
        # When a 7 s job runs
        handle = submit_job("simulation", {"steps": 7, "step_seconds": 1.0, "output": "once"}, app=app)
        index = unacked_index_key(app.conf.broker_transport_options)
        assert index == KEY_PREFIX + "unacked_index"
        tag, first = wait_for(lambda: next(iter(redis_client.zrange(index, 0, -1, withscores=True)), None), 20,
                              what="the job's message in the prefixed unacked index")
        # Then its lease is renewed under the prefix, past the visibility timeout
        wait_for(lambda: (redis_client.zscore(index, tag) or 0) > first + 4, 10,
                 what="the lease to be renewed in the prefixed unacked index")
        result = handle.wait(timeout=30)
        # And it ran to the end, delivered once (never restored and handed out again)
        assert result["output"] == "once" and result["duration"] >= 6.0
        received = re.findall(rf"Task jobqueue\.run_job\[{re.escape(handle.id)}\] received", worker.log_text())
        assert len(received) == 1, worker.log_text()[-3000:]
        # and nothing went to the unprefixed key the lease once wrote
        assert not redis_client.exists("unacked_index")
    finally:
        worker.stop()
