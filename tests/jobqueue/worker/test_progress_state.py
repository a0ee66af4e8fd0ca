"""store_guarded: a job's progress as Celery's PROGRESS record in one round trip, never over a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import states as celery_states
from celery.app.task import Context

from jobqueue import transport
from jobqueue.states import PROGRESS
from jobqueue.transport.results import store_guarded
from tests.helpers import wait_for


def _request(job_id: str) -> Context:
    return Context(id=job_id, task="jobqueue.run_job", args=[], hostname="gpu0@m1", retries=0,
                   kwargs={"service": "simulation", "payload": {"steps": 3}, "options": {}},
                   delivery_info={"routing_key": "gpu0"})


def test_the_record_is_the_one_update_state_stores_and_reads_back_as_progress(app, redis_client):
    # Given a job's progress written by Celery itself and by store_guarded
    meta = {"percent": 50.0, "step": 1, "total_steps": 2, "message": "half", "service": "simulation"}
    app.backend.store_result("by-celery", meta, PROGRESS, request=_request("by-celery"))
    assert store_guarded(app.backend, "ours", meta, PROGRESS, _request("ours"))
    # Then both records hold the same fields (extended ones included), and read back alike
    celery_record = app.backend.decode(redis_client.get(app.backend.get_key_for_task("by-celery")))
    our_record = app.backend.decode(redis_client.get(app.backend.get_key_for_task("ours")))
    assert our_record == {**celery_record, "task_id": "ours"}
    assert our_record["kwargs"]["payload"] == {"steps": 3} and our_record["worker"] == "gpu0@m1"
    result = app.AsyncResult("ours")
    assert result.state == PROGRESS and result.info == meta
    # And the record expires with the results
    assert 0 < redis_client.ttl(app.backend.get_key_for_task("ours")) <= int(app.conf.result_expires)


def test_a_stored_success_is_never_overwritten(app):
    # Given a job whose result is stored
    app.backend.store_result("done", {"output": 1}, celery_states.SUCCESS)
    # When a late progress report of it is written
    written = store_guarded(app.backend, "done", {"percent": 10.0}, PROGRESS, _request("done"))
    # Then nothing changed
    assert written is False
    assert app.AsyncResult("done").state == celery_states.SUCCESS and app.AsyncResult("done").result == {"output": 1}


def test_the_record_is_published_on_the_channel_result_consumers_follow(app):
    # Given a client following the job through the result backend's pub/sub
    seen: list[dict[str, Any]] = []
    pubsub = app.backend.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(app.backend.get_key_for_task("live"))
    try:
        # When progress is written
        store_guarded(app.backend, "live", {"percent": 25.0}, PROGRESS, _request("live"))

        # Then the follower receives Celery's record of it
        def received() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                seen.append(app.backend.decode_result(message["data"]))
            return bool(seen)

        wait_for(received, 5, what="the published record")
    finally:
        pubsub.close()
    assert seen[0]["status"] == PROGRESS and seen[0]["result"] == {"percent": 25.0} and seen[0]["task_id"] == "live"


def test_progress_goes_through_one_script_registered_once_per_backend_client(app, redis_client):
    # Given two progress reports of two jobs written through one backend
    store_guarded(app.backend, "p1", {"percent": 10.0}, PROGRESS, _request("p1"))
    script = app.backend._script
    store_guarded(app.backend, "p2", {"percent": 20.0}, PROGRESS, _request("p2"))
    # Then both went through the same script, registered with the backend's client and known
    # to Redis, whose text is the packaged guarded_set.lua beside the module that loads it
    assert script is not None and app.backend._script is script
    assert script.registered_client is app.backend.client
    assert redis_client.script_exists(script.sha) == [True]
    lua = Path(transport.__file__).with_name("guarded_set.lua").read_text(encoding="utf-8")
    assert script.script == lua
    assert app.AsyncResult("p2").info == {"percent": 20.0}
