"""Every Redis key jobqueue writes keeps its exact format: old and new workers share one broker
and one result backend during a rolling upgrade, so a key that changed by one byte would be a
record one of them never finds."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.shared import records
from jobqueue.transport import internals
from jobqueue.transport.app import configure_app

#: Each key function with its arguments and the exact key today's workers use.
PINNED = [
    (records.facts_key, ("j1",), "jobqueue-facts-j1"),
    (records.submitted_key, ("j1",), "jobqueue-submitted-j1"),
    (records.requires_key, ("j1",), "jobqueue-requires-j1"),
    (records.attempts_key, ("j1",), "jobqueue-attempts-j1"),
    (records.retry_key, ("j1",), "jobqueue-retry-j1"),
    (records.preview_key, ("j1",), "jobqueue-preview-j1"),
    (records.webhook_attempts_key, ("j1",), "jobqueue-webhook-attempts-j1"),
    (records.webhook_delivered_key, ("d1",), "jobqueue-webhook-delivered-d1"),
    (records.workflow_key, ("w1",), "jobqueue-workflow-w1"),
    (records.workflow_step_key, ("j1",), "jobqueue-workflow-step-j1"),
    (records.orphan_book_key, ("gpu0@m1", "comfyui"), "jobqueue-orphans-gpu0@m1-comfyui"),
    (records.warm_key, ("comfyui",), "jobqueue-warm-comfyui"),
    (records.queued_key, ("comfyui",), "jobqueue-queued-comfyui"),
    (records.tenant_queued_key, ("acme",), "jobqueue-tenant-queued-acme"),
    (records.tenant_running_key, ("acme",), "jobqueue-tenant-running-acme"),
    (records.tenant_queues_key, (), "jobqueue-tenant-queues"),
    (records.replication_fence_key, (), "jobqueue-replication-fence"),
    (records.crashes_key, ("j1",), "jobqueue-crashes-j1"),
    (records.moved_up_key, (), "jobqueue-moved-up"),
    (records.moved_up_info_key, (), "jobqueue-moved-up-info"),
    (records.dead_letter_key, ("simulation",), "simulation.dead"),
]


@pytest.mark.parametrize(("key", "args", "expected"), PINNED, ids=[p[0].__name__ for p in PINNED])
def test_every_key_keeps_the_exact_format_older_workers_use(key: Any, args: tuple[Any, ...], expected: str) -> None:
    assert key(*args) == expected


def test_every_key_function_of_the_module_is_pinned() -> None:
    pinned = {p[0].__name__ for p in PINNED}
    keys = {name for name in records.__all__ if name.endswith("_key")}
    assert keys - pinned == set()


@pytest.mark.parametrize(("options", "prefix"), [({}, ""), ({"global_keyprefix": "jq:"}, "jq:")],
                         ids=["no-prefix", "global_keyprefix"])
def test_the_broker_keyprefix_goes_in_front_of_every_broker_key_our_own_clients_build(
        options: dict[str, str], prefix: str) -> None:
    assert internals.global_keyprefix(options) == prefix
    assert internals.unacked_key(options) == prefix + "unacked"
    assert internals.unacked_index_key(options) == prefix + "unacked_index"
    assert internals.redis_queue_keys("simulation", prefix=prefix)[:2] == [prefix + "simulation",
                                                                          prefix + "simulation\x06\x161"]
    assert records.dead_letter_key("simulation", prefix=internals.global_keyprefix(options)) == prefix + "simulation.dead"


@pytest.mark.parametrize(("options", "prefix"), [({}, ""), ({"global_keyprefix": "jqr:"}, "jqr:")],
                         ids=["no-prefix", "global_keyprefix"])
def test_a_result_record_key_is_celerys_and_only_it_carries_the_backends_prefix(
        settings: Any, options: dict[str, str], prefix: str) -> None:
    app = configure_app(settings, main="records-test")
    app.conf.result_backend_transport_options = options
    try:
        assert internals.result_key(app, "j1") == prefix + "celery-task-meta-j1"
        assert internals.result_key_prefix(app) == prefix + "celery-task-meta-"
        assert records.facts_key("j1") == "jobqueue-facts-j1"
    finally:
        app.close()


def test_the_result_client_is_the_backends_redis_client_or_none() -> None:
    class Backend:
        def __init__(self, client: Any) -> None:
            self.client = client

    class App:
        def __init__(self, client: Any) -> None:
            self.backend = Backend(client)

    class Pipelined:
        def pipeline(self) -> None:
            return None

    client = Pipelined()
    assert records.result_client(App(client)) is client
    assert records.result_client(App(object())) is None
    assert records.result_client(App(None)) is None
