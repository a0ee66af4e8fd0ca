"""A retry or re-run from the monitor submits the job again as it was submitted: its payload and
every submit option, ``requires`` and ``webhook_url`` included (real workers, real Redis, a real
webhook receiver on loopback)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.client.rerun import resubmit_arguments
from jobqueue.config import Settings
from monitor.app import create_app
from monitor.merge.apply import apply
from tests.helpers import wait_for
from tests.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"jobqueue-test-secret-0123456789ab").decode()
TOKEN = "rerun-token"
#: A viewer is enough for the payload route (monitor/web/routes.py declarations).
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhook targets on loopback are allowed on purpose (test_webhook_targets.py tests refusals)."""
    return settings.model_copy(update={"webhook_allowed_networks": ("127.0.0.1/32",)})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(lambda n: 204).start()
    yield server
    server.stop()


@pytest.fixture
def monitor(settings: Settings) -> Iterator[Any]:
    """The monitor's Flask app on the test's Redis (its collector is not needed: the test tells
    its store about the job)."""
    flask_app = create_app(settings.model_copy(update={"monitor_token": TOKEN}))
    yield flask_app
    flask_app.extensions["jobqueue_monitor"].close()


def _known(monitor: Any, job_id: str) -> None:
    with monitor.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "task-sent", "uuid": job_id, "timestamp": 1_700_000_000.0,
               "kwargs": json.dumps({"service": "simulation", "queue": "simulation"})}, tx)


def test_resubmit_arguments_keep_every_option_and_drop_only_the_first_jobs_own() -> None:
    kwargs = {"service": "simulation", "payload": {"steps": 1},
              "options": {"service": "simulation", "priority": 7, "queue": "simulation.tag.fast", "timeout": 30.0,
                          "workflow_id": "wf", "step": 2, "workflow_steps": 3, "requires": {"tags": ["fast"]},
                          "webhook_url": "https://app.example/hook", "submitted_at": 1.0, "batch_id": "b",
                          "batch_index": 0, "batch_size": 2, "retry_of": "older", "tenant": "acme"}}
    args = resubmit_arguments("job-1", kwargs, "simulation")
    assert args == {"service": "simulation", "payload": {"steps": 1}, "priority": 7, "queue": "simulation.tag.fast",
                    "timeout": 30.0, "workflow_id": "wf", "step": 2, "requires": {"tags": ["fast"]},
                    "webhook_url": "https://app.example/hook", "tenant": "acme",
                    "extra": {"workflow_steps": 3, "retry_of": "job-1"}}
    # A job that went to its tenant's queue is routed again, not pinned there
    kwargs["options"]["queue"] = "acme/simulation.tag.fast"
    assert resubmit_arguments("job-1", kwargs, "simulation")["queue"] is None


def test_a_retried_job_keeps_its_requires_and_webhook_and_its_webhook_fires(
        app: Any, start_worker: Any, receiver: Receiver, monitor: Any) -> None:
    # Given a worker tagged "fast", and a job that needs that tag, has a webhook and fails
    start_worker("gpu0", WORKER_TAGS="fast", WEBHOOK_SECRET=SECRET)
    first = submit_job("simulation", {"steps": 1, "fail_at_step": 1}, requires={"tags": ["fast"]},
                       webhook_url=receiver.url, priority=7, app=app)
    wait_for(lambda: any(json.loads(r.body)["data"]["id"] == first.id for r in receiver.requests), 60,
             what="the first job's webhook")
    _known(monitor, first.id)
    # When the monitor retries it
    reply = monitor.test_client().post(f"/api/jobs/{first.id}/retry", json={},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == 201, reply.get_json()
    again = reply.get_json()["id"]
    # Then the new job was submitted with the same requires, webhook and priority
    options = wait_for(lambda: app.AsyncResult(again).kwargs, 30, what="the new job's kwargs")["options"]
    assert options["requires"] == {"tags": ["fast"]} and options["webhook_url"] == receiver.url
    assert options["priority"] == 7 and options["retry_of"] == first.id
    # And it ran on the tagged worker and its webhook reached the receiver
    wait_for(lambda: any(json.loads(r.body)["data"]["id"] == again for r in receiver.requests), 60,
             what="the retried job's webhook")
    body = next(json.loads(r.body) for r in receiver.requests if json.loads(r.body)["data"]["id"] == again)
    assert body["type"] == "job.failed"


def test_the_payload_route_gives_the_payload_as_submitted_with_secrets_masked(
        app: Any, start_worker: Any, monitor: Any) -> None:
    # Given a job whose payload holds a secret, and one the monitor does not know
    start_worker("gpu0")
    handle = submit_job("simulation", {"steps": 1, "output": {"api_key": "sk-live-123", "note": "seen"}}, app=app)
    handle.wait(timeout=30)
    _known(monitor, handle.id)
    client = monitor.test_client()
    # When its payload is asked for
    reply = client.get(f"/api/jobs/{handle.id}/payload", headers=AUTH)
    # Then it comes back as submitted, the secret masked
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["service"] == "simulation" and body["payload"]["steps"] == 1
    assert body["payload"]["output"]["note"] == "seen" and "sk-live-123" not in reply.get_data(as_text=True)
    # And an unknown job is a 404, a job whose kwargs the backend lost a 409
    assert client.get("/api/jobs/nope/payload", headers=AUTH).status_code == 404
    _known(monitor, "job-without-kwargs")
    assert client.get("/api/jobs/job-without-kwargs/payload", headers=AUTH).get_json()["error"]["code"] == "payload_unknown"
