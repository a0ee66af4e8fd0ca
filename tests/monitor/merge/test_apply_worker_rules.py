"""The worker and connector merge rules on plain values, no database."""

from __future__ import annotations

from jobqueue.shared.names import WORKER_HEARTBEAT, WORKER_OFFLINE
from monitor.merge.worker_rules import (
    ConnectorReport,
    ConnectorState,
    Identity,
    Liveness,
    connector_rule,
    identity_rule,
    liveness_rule,
)

T0 = 1_700_000_000.0


def report(status: str = "idle", *, seq: int | None = None, ts: float = T0, received: float = T0,
           repair: bool = False) -> ConnectorReport:
    return ConnectorReport(status=status, message="", details={}, ts=ts, received=received, seq=seq, repair=repair)


def test_a_known_machine_is_never_replaced_by_unknown_and_a_conflict_is_a_warning():
    # Given a worker that reported machine vm1
    known = Identity(machine_id="vm1", gpu=0, source="worker")
    # When it reports "unknown", then vm2
    after_unknown = identity_rule(known, "unknown", None, "worker")
    after_conflict = identity_rule(known, "vm2", None, "worker")
    # Then it stays on vm1, and the disagreement is a warning
    assert after_unknown == known
    assert after_conflict.machine_id == "vm1"
    assert after_conflict.warning == "reported machine_id 'vm2' differs from 'vm1'"


def test_a_machine_guessed_from_the_node_name_gives_way_to_the_workers_own_report():
    # Given a machine guessed from the node name gpu0@vm1
    guessed = identity_rule(Identity(), "vm1", 0, "name")
    # When the worker reports its machine as rack7
    reported = identity_rule(guessed, "rack7", 3, "worker")
    # Then the worker's report wins, GPU included
    assert (guessed.machine_id, guessed.source) == ("vm1", "name")
    assert (reported.machine_id, reported.gpu, reported.source, reported.warning) == ("rack7", 3, "worker", None)


def test_a_worker_without_a_machine_is_warned_about_it():
    # Given a worker nobody reported a machine for
    # When a report without a machine arrives
    new = identity_rule(Identity(), None, None, "worker")
    # Then it carries the missing-machine warning
    assert new.warning == "missing machine_id"


def test_a_heartbeat_from_before_a_worker_went_offline_changes_nothing():
    # Given a worker offline since its last heartbeat at T0+10
    stored = Liveness(status="offline", heartbeat_at=T0 + 10)
    # When a heartbeat dated T0+5 arrives late
    out = liveness_rule(stored, WORKER_HEARTBEAT, T0 + 5, T0 + 11, {})
    # Then it is late and changes nothing
    assert out.late and not out.changed and out.state == stored


def test_a_worker_going_offline_loses_its_jobs_since_its_last_heartbeat():
    # Given an online worker last heard at T0+10
    stored = Liveness(status="online", heartbeat_at=T0 + 10, heartbeat_received=T0 + 10)
    # When it says it goes offline at T0+12
    out = liveness_rule(stored, WORKER_OFFLINE, T0 + 12, T0 + 12, {})
    # Then it is offline, and its jobs are lost since its last heartbeat
    assert out.changed and out.state.status == "offline"
    assert out.lost_since == T0 + 10 and out.state.heartbeat_at == T0 + 12


def test_a_heartbeat_brings_a_draining_offline_worker_back_online_with_its_reported_numbers():
    # Given an offline worker that was draining
    stored = Liveness(status="offline", draining=True, heartbeat_at=T0)
    # When it heartbeats with its load and counters
    out = liveness_rule(stored, WORKER_HEARTBEAT, T0 + 5, T0 + 6, {"active": 1, "processed": 9, "freq": 2.0})
    # Then it is online, no longer draining, with those numbers
    s = out.state
    assert (s.status, s.draining, s.active, s.processed, s.freq) == ("online", False, 1, 9, 2.0)
    assert (s.heartbeat_at, s.heartbeat_received) == (T0 + 5, T0 + 6)


def test_an_older_connector_report_never_replaces_a_newer_one():
    # Given a connector status with seq 5
    stored = ConnectorState(status="active", event_seq=5, updated_at=T0 + 5)
    # When a report with seq 4 arrives
    state, changed = connector_rule(stored, report("error", seq=4, ts=T0 + 9))
    # Then nothing changes
    assert not changed and state == stored


def test_the_same_connector_report_again_makes_a_stale_status_fresh():
    # Given a stale connector status with seq 5, received at T0
    stored = ConnectorState(status="idle", event_seq=5, received_at=T0, stale=True)
    # When the worker confirms seq 5 at T0+30
    state, changed = connector_rule(stored, report("idle", seq=5, received=T0 + 30))
    # Then it is fresh again, as of T0+30
    assert changed and state is not None
    assert (state.stale, state.received_at, state.status) == (False, T0 + 30, "idle")


def test_a_repair_answer_without_seq_loses_to_an_event_received_after_it_was_asked():
    # Given a status from an event received at T0+10 (an older worker: no seq)
    stored = ConnectorState(status="active", updated_at=T0 + 10, received_at=T0 + 10)
    # When a repair answer asked for at T0+5 arrives, and one asked for at T0+20
    stale_answer, stale_changed = connector_rule(stored, report("idle", ts=T0 + 5, received=T0 + 5, repair=True))
    fresh_answer, fresh_changed = connector_rule(stored, report("idle", ts=T0 + 20, received=T0 + 20, repair=True))
    # Then only the later answer replaces it
    assert not stale_changed and stale_answer == stored
    assert fresh_changed and fresh_answer is not None and fresh_answer.status == "idle"


def test_a_first_connector_report_creates_its_status():
    # Given no stored status for the connector
    # When its first report arrives with an interval
    state, changed = connector_rule(None, ConnectorReport(status="starting", message="warming up", details={"a": 1},
                                                          ts=T0, received=T0 + 1, seq=7, pid=42, interval=15.0))
    # Then it is stored as reported
    assert changed and state == ConnectorState(status="starting", message="warming up", details={"a": 1},
                                               updated_at=T0, received_at=T0 + 1, event_seq=7, pid=42,
                                               interval=15.0, stale=False)
