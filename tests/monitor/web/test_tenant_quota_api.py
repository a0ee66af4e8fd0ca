"""A tenant's quota of queued jobs over HTTP: a real monitor process on the test's Redis, a
tenant's API key, ``POST /api/jobs`` over the quota answers 429 with ``Retry-After``."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from jobqueue.shared.records import queued_key, tenant_queued_key
from jobqueue.transport.internals import redis_queue_keys
from tests.helpers import quick

pytestmark = [pytest.mark.timeout(180)]


def messages(redis_client: Any, *queues: str) -> int:
    return int(sum(redis_client.llen(key) for queue in queues for key in redis_queue_keys(queue)))


def test_over_http_a_tenants_key_over_its_quota_gets_429_with_retry_after_and_nothing_is_enqueued(
        start_monitor, redis_client):
    # Given a monitor with a quota of 2 queued jobs for acme, and an operator key of acme
    monitor = start_monitor(MONITOR_TOKEN="t0ken", TENANT_QUOTAS="acme=queued:2")
    made = requests.post(f"{monitor.url}/api/keys", json={"role": "operator", "tenant": "acme"},
                         headers={"Authorization": "Bearer t0ken"}, timeout=10)
    assert made.status_code == 201, made.text
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    body = {"service": "simulation", "payload": quick("x")}
    # When it submits 2 jobs at once, then 1 more
    first = requests.post(f"{monitor.url}/api/jobs", json={**body, "count": 2}, headers=key, timeout=10)
    assert first.status_code == 201, first.text
    over = requests.post(f"{monitor.url}/api/jobs", json=body, headers=key, timeout=10)
    # Then the third is refused with 429, a Retry-After and the JSON error shape
    assert over.status_code == 429, over.text
    assert int(over.headers["Retry-After"]) >= 1
    assert over.json()["error"]["code"] == "quota_exceeded" and "acme" in over.json()["error"]["message"]
    # And nothing of it was enqueued
    assert messages(redis_client, "acme/simulation", "simulation") == 2
    assert redis_client.zcard(queued_key("simulation")) == 2 and redis_client.zcard(tenant_queued_key("acme")) == 2
