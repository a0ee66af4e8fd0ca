"""What an attempt's start reads, read cheaply: the state of the record, the facts it needs."""

from __future__ import annotations

from typing import Any

from celery import states as celery_states

from jobqueue.errors import JobCancelled
from jobqueue.shared import job_record as facts
from jobqueue.shared import queued
from jobqueue.worker import attempts


def stored_record(app: Any, redis_client: Any, job_id: str, state: str, result: Any) -> bytes:
    app.backend.store_result(job_id, result, state)
    raw: bytes = redis_client.get(app.backend.get_key_for_task(job_id))
    return raw


def test_a_started_record_is_read_as_started_without_parsing_it(app, redis_client, monkeypatch):
    raw = stored_record(app, redis_client, "j1", celery_states.STARTED, {"pid": 1, "hostname": "w"})

    def no_parsing(_: Any) -> dict[str, Any]:
        raise AssertionError("the STARTED record was parsed")

    monkeypatch.setattr(type(app.backend), "decode_result", no_parsing)
    assert attempts.stored_state(app, raw) == celery_states.STARTED


def test_any_other_record_is_parsed_for_its_state(app, redis_client):
    assert attempts.stored_state(app, None) is None
    succeeded = stored_record(app, redis_client, "j2", celery_states.SUCCESS, {"status": "STARTED"})
    assert attempts.stored_state(app, succeeded) == celery_states.SUCCESS
    app.backend.store_result("j3", JobCancelled("cancelled by client"), celery_states.REVOKED)
    assert attempts.stored_state(app, app.backend.get(app.backend.get_key_for_task("j3"))) == celery_states.REVOKED


def test_a_start_decodes_only_the_facts_it_reads(redis_client):
    facts.write(redis_client, "j4", {"submitted_at": 1.0, "started_at": 2.0, "worker": "w1",
                                     "meta": {"service": "simulation"}, "cancelled_at": 3.0}, expires=60)
    raw = redis_client.hgetall(facts.facts_key("j4"))
    assert facts.decode(raw, attempts._START_FACTS) == {"started_at": 2.0, "worker": "w1", "cancelled_at": 3.0}
    assert facts.decode(raw)["meta"] == {"service": "simulation"}


def test_the_records_expiry_is_read_from_the_configuration_once_per_app(app):
    assert queued.expires_of(app) == int(app.conf.result_expires)
    app.conf.result_expires = 5
    assert queued.expires_of(app) != 5
