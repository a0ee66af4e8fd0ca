"""The writer's lease on a real PostgreSQL store: one holder at a time, take-over once it
expires, and fencing: a monitor that lost the lease (a paused old leader) cannot write."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import event, text

from jobqueue.errors import LeaseLost
from monitor.store import Store
from monitor.store.lease import IDLE_FLOOR, WriterLease

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    s = Store(pg_url)
    yield s
    s.close()


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_the_first_monitor_takes_the_lease_and_a_second_cannot_while_it_is_renewed(pg_store: Store) -> None:
    # Given two monitors on one store
    a = WriterLease(pg_store.engine, "a", 2.0)
    b = WriterLease(pg_store.engine, "b", 2.0)
    # When the first takes the lease
    term = a.acquire()
    # Then it holds term 1 and the second is refused, also after the first renewed it
    assert term == 1
    assert b.acquire() is None
    assert a.renew() is True
    assert b.acquire() is None
    assert a.state()["holder"] == "a"


def test_a_standby_takes_over_once_the_lease_expires_with_the_next_term(pg_store: Store) -> None:
    # Given a leader with a short lease that stops renewing (as if killed)
    a = WriterLease(pg_store.engine, "a", 0.5)
    b = WriterLease(pg_store.engine, "b", 0.5)
    assert a.acquire() == 1
    # When the standby keeps trying
    term = wait_for(b.acquire, timeout=5.0)
    # Then it took the next term and the old leader can no longer renew
    assert term == 2
    assert a.renew() is False and a.term is None


def test_a_paused_old_leader_cannot_write_after_another_monitor_took_over(pg_url: str, pg_store: Store) -> None:
    # Given a leader writing through its fenced store
    a = WriterLease(pg_store.engine, "a", 0.5)
    assert a.acquire() == 1
    pg_store.fence = a.fence
    with pg_store.write() as tx:
        tx.job("job-1")
        tx.touch("job", "job-1")
    seq = pg_store.seq()
    # When it pauses (no renewal) and a standby takes over
    other = Store(pg_url)
    try:
        b = WriterLease(other.engine, "b", 0.5)
        wait_for(b.acquire, timeout=5.0)
        # Then the old leader's next write fails (its local term is stale) and changes nothing
        with pytest.raises(LeaseLost):
            with pg_store.write() as tx:
                tx.job("job-2")
                tx.touch("job", "job-2")
        assert pg_store.seq() == seq
        assert pg_store.job("job-2") is None
    finally:
        other.close()


def test_a_take_over_waits_for_the_old_leaders_write_in_flight_which_then_commits_alone(
        pg_url: str, pg_store: Store) -> None:
    # Given a leader inside a write transaction, its lease already expired
    a = WriterLease(pg_store.engine, "a", 0.3)
    assert a.acquire() == 1
    pg_store.fence = a.fence
    inside, release = threading.Event(), threading.Event()

    def write() -> None:
        with pg_store.write() as tx:
            tx.job("job-1")
            tx.touch("job", "job-1")
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(10)
    time.sleep(0.4)  # let the lease expire while the write is in flight (the state under test)
    other = Store(pg_url)
    try:
        b = WriterLease(other.engine, "b", 0.3)
        # When a standby tries to take over meanwhile
        # Then it cannot (the row is locked by the write in flight) ...
        assert b.acquire() is None
        release.set()
        writer.join(10)
        # ... and can once the write committed; the write is in the store
        assert wait_for(b.acquire, timeout=5.0) == 2
        assert pg_store.job("job-1") is not None
        with other.engine.connect() as conn:
            assert conn.execute(text("SELECT term FROM writer_lease")).scalar() == 2
    finally:
        release.set()
        other.close()


def test_a_renew_paused_before_its_commit_keeps_a_standby_out_only_until_postgresql_ends_it(
        pg_store: Store) -> None:
    # Given a leader whose renew stops between its UPDATE and its COMMIT (a SIGSTOPped process:
    # the row stays locked by an idle transaction)
    engine = pg_store.engine
    leader, standby = WriterLease(engine, "a", 1.0), WriterLease(engine, "b", 1.0)
    assert leader.acquire() == 1
    paused, resume = threading.Event(), threading.Event()

    def stop_after_the_update(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "renewer" and statement.lstrip().startswith("UPDATE writer_lease"):
            paused.set()
            resume.wait(60)

    event.listen(engine, "after_cursor_execute", stop_after_the_update)
    failures: list[BaseException] = []

    def renew() -> None:
        try:
            leader.renew()
        except Exception as exc:  # the session PostgreSQL ended
            failures.append(exc)

    renewer = threading.Thread(target=renew, name="renewer")
    renewer.start()
    try:
        assert paused.wait(10)
        started = time.monotonic()
        # When the standby keeps trying, then it takes the next term once PostgreSQL ended the
        # paused transaction (idle_in_transaction_session_timeout), not never
        assert wait_for(standby.acquire, timeout=IDLE_FLOOR + 10) == 2
        assert time.monotonic() - started >= 1.0  # (it did wait for the lock)
    finally:
        resume.set()
        renewer.join(30)
        event.remove(engine, "after_cursor_execute", stop_after_the_update)
    # And the old leader's renew did not outlive it
    assert failures or leader.term is None


def test_a_write_paused_between_the_rows_of_an_executemany_is_ended_by_postgresql(pg_store: Store) -> None:
    # Given a write transaction that holds the lease row (as the writes' fence does) with a 1 s
    # bound on an idle transaction, on the store's own engine (the cursor the writer uses)
    import psycopg

    engine = pg_store.engine
    assert WriterLease(engine, "a", 60.0).acquire() == 1
    connection = engine.connect()
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("SELECT set_config('idle_in_transaction_session_timeout', '1000', true)")
    cursor.execute("SELECT term FROM writer_lease FOR SHARE")
    pid = connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]

    def gone() -> bool:
        with engine.connect() as other:
            return other.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                 {"pid": pid}).scalar() == 0

    def rows() -> Iterator[dict[str, int]]:
        yield {"n": 1}
        # When the process stops between two rows (a SIGSTOP): PostgreSQL must end the
        # session meanwhile (psycopg's pipeline mode would keep it "active" for good)
        wait_for(gone, timeout=IDLE_FLOOR + 10)
        yield {"n": 2}

    try:
        # Then the session was ended while paused, and the rest of the executemany fails
        with pytest.raises((psycopg.errors.IdleInTransactionSessionTimeout, psycopg.OperationalError)):
            cursor.executemany("SELECT %(n)s", rows())
    finally:
        connection.invalidate()
        connection.close()
    # And a standby can take the lease row's lock again
    with engine.begin() as conn:
        assert conn.execute(text("SELECT term FROM writer_lease FOR UPDATE NOWAIT")).scalar() == 1


def test_the_store_cursors_executemany_counts_every_row_it_changed(pg_store: Store) -> None:
    # Given rows in a table of the store's database
    with pg_store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE counted (id int primary key, v int)"))
        conn.execute(text("INSERT INTO counted VALUES (1, 0), (2, 0), (3, 0)"))
    # When one executemany updates three of them, one statement per row
    with pg_store.engine.begin() as conn:
        result = conn.execute(text("UPDATE counted SET v = v + 1 WHERE id = :id"), [{"id": 1}, {"id": 2}, {"id": 3}])
        # Then its row count is the sum, as psycopg's own executemany reports it (the ORM checks it)
        assert result.rowcount == 3
        assert conn.execute(text("SELECT sum(v) FROM counted")).scalar() == 3
