"""Unit tests of the worker's status machinery with stubs: the runtime's connector lifecycle,
the status reporter (sequence numbers, ordering, beat, buffering), the consumer gate and the
health loop. The real path is covered in test_connector_status.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.connectors.base import Connector, Health, Job, ProgressReporter
from jobqueue.errors import ExecutionFailed, JobStalled, ServiceUnavailable
from jobqueue.shared.names import CONNECTOR_STATUS
from jobqueue.states import ConnectorStatus
from jobqueue.worker.gate import ConsumerGate
from jobqueue.worker.health import HealthLoop
from jobqueue.worker.identity import WorkerIdentity
from jobqueue.worker.runtime import WorkerRuntime
from jobqueue.worker.status import StatusReporter
from tests.helpers import wait_for

IDLE, ACTIVE, ERROR = ConnectorStatus.IDLE, ConnectorStatus.ACTIVE, ConnectorStatus.ERROR


class StubConnector(Connector):
    """A connector whose service health the test sets."""

    service = "stub"

    def __init__(self, settings: Settings, *, gpu: int = 0) -> None:
        super().__init__(settings, gpu=gpu)
        self.health = Health(IDLE, "", {"version": "1.0"})

    def check_health(self) -> Health:
        return self.health

    def run(self, job: Job, report_progress: ProgressReporter) -> dict[str, Any]:
        return {}


class RecordingSender:
    """A sender that keeps what it was given (and can fail on demand)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, event_type: str, fields: dict[str, Any]) -> None:
        assert event_type == CONNECTOR_STATUS
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("broker away")
            self.sent.append(fields)

    def statuses(self, beat: bool | None = None) -> list[str]:
        with self.lock:
            return [e["status"] for e in self.sent if beat is None or e["beat"] == beat]


@pytest.fixture
def identity() -> WorkerIdentity:
    return WorkerIdentity("m1", 0, "gpu0@m1", ("stub",), ("gpu0", "stub"))


@pytest.fixture
def reporter(identity: WorkerIdentity) -> Iterator[StatusReporter]:
    rep = StatusReporter(identity, beat_interval=60.0).start()
    yield rep
    rep.stop()


@pytest.fixture
def runtime(identity: WorkerIdentity, reporter: StatusReporter) -> WorkerRuntime:
    return WorkerRuntime(Settings(), identity, factory=lambda s, st, g: StubConnector(st, gpu=g), reporter=reporter)


def job(job_id: str = "j1") -> Job:
    return Job(id=job_id, service="stub", payload={})


# -- runtime lifecycle -----------------------------------------------------------------------
@pytest.mark.parametrize("down", [ERROR, ConnectorStatus.OFFLINE])
def test_a_service_down_at_start_is_waited_for_and_only_later_failures_are_errors(runtime, down):
    connector = runtime.connectors["stub"]
    assert connector.status == ConnectorStatus.STARTING
    # Given a service that is not up yet (failing, or refusing connections)
    connector.health = Health(down, "connection refused")
    runtime.check_health()
    assert (connector.status, connector.message) == (ConnectorStatus.WAITING_FOR_SERVICE, "connection refused")
    # When it comes up, then goes away
    connector.health = Health(IDLE, "", {"version": "1.0"})
    runtime.check_health()
    assert connector.status == IDLE
    connector.health = Health(ERROR, "connection refused")
    runtime.check_health()
    # Then the later failure is an error with the service's reason
    assert (connector.status, connector.message) == (ERROR, "connection refused")


def test_jobs_make_the_connector_active_then_idle_and_a_health_check_keeps_it_active(runtime, reporter):
    connector = runtime.connectors["stub"]
    runtime.check_health()
    runtime.job_started(job(), connector)
    assert (connector.status, connector.message) == (ACTIVE, "running job j1")
    runtime.check_health()
    assert connector.status == ACTIVE
    runtime.job_finished(job(), connector)
    assert connector.status == IDLE
    sender = RecordingSender()
    reporter.attach(sender)
    assert reporter.flush()
    assert sender.statuses(beat=False) == ["starting", "idle", "active", "idle"]


@pytest.mark.parametrize("error", [ServiceUnavailable("service went away"), JobStalled("no progress for 30 s")])
def test_a_job_that_loses_its_service_turns_the_connector_to_error_with_the_message(runtime, error):
    connector = runtime.connectors["stub"]
    runtime.check_health()
    runtime.job_started(job(), connector)
    runtime.job_finished(job(), connector, error)
    assert (connector.status, connector.message) == (ERROR, str(error))


def test_a_job_that_fails_on_its_own_leaves_the_connector_idle(runtime):
    connector = runtime.connectors["stub"]
    runtime.check_health()
    runtime.job_started(job(), connector)
    runtime.job_finished(job(), connector, ExecutionFailed("bad workflow"))
    assert connector.status == IDLE


def test_a_job_reaching_an_unhealthy_connector_does_not_make_it_look_healthy(runtime):
    connector = runtime.connectors["stub"]
    connector.health = Health(ERROR, "down")
    runtime.check_health()
    runtime.job_started(job(), connector)
    assert connector.status == ConnectorStatus.WAITING_FOR_SERVICE


def test_after_offline_nothing_changes_a_status(runtime):
    connector = runtime.connectors["stub"]
    runtime.check_health()
    runtime.job_started(job(), connector)
    runtime.mark_offline()
    runtime.job_finished(job(), connector, ServiceUnavailable("gone"))
    runtime.check_health()
    assert (connector.status, connector.message) == (ConnectorStatus.OFFLINE, "worker stopping")


def test_the_snapshot_holds_identity_and_the_reported_statuses_with_their_seq(runtime, reporter):
    runtime.check_health()
    snap = runtime.snapshot()
    assert (snap["worker"], snap["machine_id"], snap["gpu"]) == ("gpu0@m1", "m1", 0)
    stub = snap["connectors"]["stub"]
    assert stub["status"] == "idle"
    assert stub["seq"] == reporter.reports()["stub"].seq == snap["seq"]
    # The service's facts, plus what the worker offers (a stub has no models; no tags declared)
    assert stub["details"] == {"version": "1.0", "capabilities": {"tags": [], "loaded": [], "load_seconds": None}}


def test_a_service_failure_waits_for_the_consumer_to_step_aside(runtime):
    connector = runtime.connectors["stub"]
    runtime.check_health()
    synced: list[bool] = []

    class Gate:
        def request_sync(self) -> threading.Event:
            done = threading.Event()
            threading.Timer(0.05, lambda: (synced.append(True), done.set())).start()
            return done

    runtime.gate = Gate()
    runtime.job_started(job(), connector)
    runtime.job_finished(job(), connector, ServiceUnavailable("gone"))
    assert synced, "job_finished returned before the consumer stopped taking the service's jobs"


# -- status reporter -------------------------------------------------------------------------
def test_each_change_is_numbered_and_repeats_are_not_events(identity):
    reporter = StatusReporter(identity, beat_interval=60.0, first_seq=100)
    first = reporter.record("stub", IDLE)
    assert first is not None and first.seq == 101
    assert reporter.record("stub", IDLE) is None
    assert reporter.record("stub", IDLE, details={"vram_free": 1}) is None
    assert reporter.reports()["stub"].details == {"vram_free": 1}
    second = reporter.record("stub", ACTIVE, "running job j1")
    assert second is not None and second.seq == 102
    assert reporter.seq == 102


def test_events_carry_identity_and_go_out_in_seq_order_from_many_threads(reporter):
    sender = RecordingSender()
    reporter.attach(sender)

    def flap(service: str) -> None:
        for i in range(50):
            reporter.record(service, ACTIVE if i % 2 else IDLE, f"{i}")

    threads = [threading.Thread(target=flap, args=(f"s{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reporter.flush()
    changes = [e for e in sender.sent if not e["beat"]]
    assert len(changes) == 200
    seqs = [e["seq"] for e in sender.sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    event = changes[0]
    assert (event["worker"], event["machine_id"], event["gpu"]) == ("gpu0@m1", "m1", 0)
    assert event["connectors"] == ["stub"] and event["interval"] == 60.0


def test_changes_recorded_while_detached_are_sent_on_attach_then_the_full_set(reporter):
    reporter.record("stub", ConnectorStatus.STARTING)
    reporter.record("stub", IDLE)
    sender = RecordingSender()
    reporter.attach(sender)
    assert reporter.flush()
    assert sender.statuses(beat=False) == ["starting", "idle"]
    assert sender.statuses(beat=True) == ["idle"]


def test_the_beat_re_sends_unchanged_statuses_steadily(identity):
    reporter = StatusReporter(identity, beat_interval=0.1).start()
    try:
        reporter.record("stub", IDLE)
        sender = RecordingSender()
        reporter.attach(sender)
        wait_for(lambda: len(sender.statuses(beat=True)) >= 4, 5)
        assert set(sender.statuses(beat=True)) == {"idle"}
        assert sender.statuses(beat=False) == ["idle"]
        assert reporter.reports()["stub"].seq == sender.sent[-1]["seq"]
    finally:
        reporter.stop()


def test_a_failure_to_send_never_stops_the_reporter(reporter):
    sender = RecordingSender(fail_first=1)
    reporter.attach(sender)  # the full set (empty) goes first; then our change fails
    reporter.record("stub", IDLE)
    wait_for(lambda: reporter.failed == 1, 5)
    reporter.record("stub", ACTIVE)
    assert reporter.flush()
    assert sender.statuses(beat=False) == ["active"]


def test_a_new_process_numbers_after_the_previous_one(identity):
    old = StatusReporter(identity, beat_interval=60.0, wall_clock=lambda: 1000.0)
    for i in range(500):
        old.record("stub", IDLE, str(i))
    new = StatusReporter(identity, beat_interval=60.0, wall_clock=lambda: 1005.0)
    assert new.record("stub", IDLE).seq > old.seq  # type: ignore[union-attr]


# -- consumer gate ---------------------------------------------------------------------------
class StubConsumer:
    """The part of Celery's consumer the gate uses; its hub runs callbacks on another thread."""

    def __init__(self, queues: list[str], with_hub: bool = True) -> None:
        # on_message: it can take messages (Celery's event loop set its handler)
        self.task_consumer = SimpleNamespace(queues=[SimpleNamespace(name=q) for q in queues], on_message=print,
                                             callbacks=[])
        self.calls: list[tuple[str, str]] = []
        self.hub = SimpleNamespace(call_soon=lambda fn: threading.Thread(target=fn).start()) if with_hub else None

    def add_task_queue(self, queue: str) -> None:
        self.calls.append(("add", queue))
        self.task_consumer.queues.append(SimpleNamespace(name=queue))

    def cancel_task_queue(self, queue: str) -> None:
        self.calls.append(("cancel", queue))
        self.task_consumer.queues = [q for q in self.task_consumer.queues if q.name != queue]


def test_the_gate_drops_unhealthy_service_queues_and_adds_them_back():
    health = {"stub": ConnectorStatus.WAITING_FOR_SERVICE, "other": IDLE}
    consumer = StubConsumer(["gpu0", "stub", "other"])
    gate = ConsumerGate(lambda: health)
    gate.bind(consumer)
    assert [q.name for q in consumer.task_consumer.queues] == ["gpu0", "other"]
    health["stub"] = IDLE
    assert gate.request_sync().wait(5)
    assert consumer.calls == [("cancel", "stub"), ("add", "stub")]
    assert gate.sync_now() == {"stub": True, "other": True}
    assert len(consumer.calls) == 2  # in line already: nothing to do


def test_the_gate_leaves_a_consumer_that_cannot_take_messages_yet_alone_until_it_can():
    # Given a consumer whose event loop has not set its message handler yet
    health = {"stub": IDLE, "other": ERROR}
    consumer = StubConsumer(["gpu0", "other"])
    consumer.task_consumer.on_message = None
    gate = ConsumerGate(lambda: health)
    # When the gate binds it: no queue is added nor cancelled (consuming would deliver at once)
    gate.bind(consumer)
    assert consumer.calls == [] and gate.sync_now() == {}
    # Then once the loop set the handler, a sync puts the queues in line
    consumer.task_consumer.on_message = print
    assert gate.sync_now() == {"stub": True, "other": False}
    assert consumer.calls == [("add", "stub"), ("cancel", "other")]


def test_without_an_event_loop_a_health_check_syncs_the_gate_once_the_consumer_can_take_messages(runtime):
    # Given a worker without an event loop whose consumer has no message handler yet
    runtime.check_health()
    consumer = StubConsumer(["gpu0"], with_hub=False)
    consumer.task_consumer.on_message = None
    runtime.gate = ConsumerGate(runtime.statuses)
    runtime.gate.bind(consumer)
    # When a health check runs: nothing is consumed yet
    runtime.check_health()
    assert consumer.calls == []
    # Then once the consumer can take messages, the next check adds the healthy service's queue
    consumer.task_consumer.on_message = print
    runtime.check_health()
    assert consumer.calls == [("add", "stub")]


def test_the_gate_without_a_consumer_does_nothing_and_without_a_hub_syncs_in_place():
    health = {"stub": ERROR}
    gate = ConsumerGate(lambda: health)
    assert gate.request_sync().is_set()
    consumer = StubConsumer(["stub"], with_hub=False)
    gate.bind(consumer)
    assert consumer.calls == [("cancel", "stub")]
    health["stub"] = ACTIVE
    assert gate.request_sync().is_set() and consumer.calls[-1] == ("add", "stub")
    gate.unbind()
    health["stub"] = ERROR
    gate.request_sync()
    assert consumer.calls[-1] == ("add", "stub")


# -- health loop -----------------------------------------------------------------------------
def test_the_health_loop_survives_a_failing_check_and_stops():
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    loop = HealthLoop(check, interval=0.02).start()
    wait_for(lambda: len(calls) >= 3, 5)
    loop.stop()
    assert not loop.is_alive
    with pytest.raises(ValueError):
        HealthLoop(check, interval=0)


def test_changes_within_the_window_leave_as_each_connectors_latest_once_the_oldest_has_waited(identity):
    # Given a reporter that lets changes wait 0.3 s to leave together
    reporter = StatusReporter(identity, beat_interval=60.0, window=0.3).start()
    try:
        sender = RecordingSender()
        sent_at: list[float] = []

        def timed(event_type: str, fields: dict[str, Any]) -> None:
            sent_at.append(time.monotonic())
            sender(event_type, fields)

        reporter.attach(timed)
        # When a connector starts up, then runs two jobs within the window, while another fails
        first = time.monotonic()
        reporter.record("stub", ConnectorStatus.STARTING)
        reporter.record("stub", IDLE)
        reporter.record("stub", ACTIVE, "running job j1")
        reporter.record("other", ConnectorStatus.ERROR, "down")
        reporter.record("stub", IDLE)
        reporter.record("stub", ACTIVE, "running job j2")
        last = reporter.record("stub", IDLE)
        wait_for(lambda: len(sender.sent) >= 3, 5)
        # Then every health change leaves, the job flips only as their latest, in seq order,
        # and none before the window ended
        assert [(e["service"], e["status"]) for e in sender.sent] == [
            ("stub", "starting"), ("other", "error"), ("stub", "idle")]
        assert last is not None and sender.sent[-1]["seq"] == last.seq and not sender.sent[-1]["beat"]
        assert min(sent_at) >= first + 0.3
    finally:
        reporter.stop()


def test_flush_sends_waiting_changes_without_waiting_out_the_window(identity):
    reporter = StatusReporter(identity, beat_interval=60.0, window=30.0).start()
    try:
        sender = RecordingSender()
        reporter.attach(sender)
        reporter.record("stub", ConnectorStatus.OFFLINE)
        started = time.monotonic()
        assert reporter.flush(timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert "offline" in sender.statuses(beat=False)
    finally:
        reporter.stop()
