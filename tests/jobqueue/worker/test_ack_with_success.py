"""A real worker acks a successful job's message inside the script that stores its SUCCESS
(jobqueue.transport.early_ack): Redis's MONITOR sees every removal from the unacked index come
from that script, none from a transaction of kombu's own, and the jobs end done, acked, once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from jobqueue.client.jobs import submit_job
from jobqueue.transport.internals import unacked_index_key, unacked_key

pytestmark = pytest.mark.timeout(120)


def _watch(redis_url: str, db: int) -> tuple[list[dict[str, Any]], threading.Event, threading.Thread]:
    """MONITOR the server in a thread, keeping ``db``'s commands until the event is set."""
    seen: list[dict[str, Any]] = []
    stop, ready = threading.Event(), threading.Event()

    def watch() -> None:
        client = redis.Redis.from_url(redis_url)
        with client.monitor() as monitor:
            ready.set()
            while not stop.is_set():
                command = monitor.next_command()
                if command and command["db"] == db:
                    seen.append(command)
        client.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    return seen, stop, thread


def test_a_workers_ack_of_a_successful_job_rides_in_the_script_that_stores_it(
        app: Any, start_worker: Any, redis_url: str, redis_client: redis.Redis) -> None:
    start_worker("gpu0")
    submit_job("simulation", {"steps": 0}, app=app).wait(timeout=60)  # warm: the worker is up
    db = int(redis_client.connection_pool.connection_kwargs.get("db", 0))
    seen, stop, thread = _watch(redis_url, db)
    try:
        for n in range(3):
            assert submit_job("simulation", {"steps": 0, "output": f"o{n}"}, app=app).wait(timeout=60)
    finally:
        stop.set()
        redis_client.ping()  # wakes the monitor's read
        thread.join(10)
    index = unacked_index_key(app.conf.broker_transport_options)
    removals = [c for c in seen if c["command"].upper().startswith(f"ZREM {index.upper()} ")]
    assert len(removals) >= 3 and {c["client_type"] for c in removals} == {"lua"}, removals
    assert redis_client.hlen(unacked_key(app.conf.broker_transport_options)) == 0
    assert redis_client.zcard(index) == 0
