"""TimerThread: a worker's delayed callbacks from one thread."""

from __future__ import annotations

import threading
import time

from jobqueue.worker.timers import TimerThread
from tests.helpers import count_notifies, wait_for


def test_calls_run_in_order_of_their_due_time_from_one_thread():
    timers = TimerThread()
    ran: list[tuple[str, str]] = []
    try:
        for name, delay in (("late", 0.2), ("early", 0.05), ("middle", 0.1)):
            timers(delay, lambda name=name: ran.append((name, threading.current_thread().name))).start()
        wait_for(lambda: len(ran) == 3, 5)
        assert [name for name, _ in ran] == ["early", "middle", "late"]
        assert {thread for _, thread in ran} == {"jobqueue-timers"}
    finally:
        timers.stop()


def test_a_cancelled_call_never_runs_and_a_failing_one_stops_nothing():
    timers = TimerThread()
    ran: list[str] = []
    try:
        cancelled = timers(0.05, lambda: ran.append("cancelled"))
        cancelled.start()
        cancelled.cancel()
        timers(0.01, lambda: 1 / 0).start()
        timers(0.1, lambda: ran.append("after")).start()
        # Calls run in due order: once "after" ran, the cancelled one (due earlier) had its turn
        wait_for(lambda: "after" in ran, 5)
        assert ran == ["after"]
    finally:
        timers.stop()


def test_stop_ends_the_thread_and_drops_calls_not_yet_due():
    timers = TimerThread()
    ran: list[str] = []
    timers(30.0, lambda: ran.append("never")).start()
    thread = timers._thread
    assert thread is not None and thread.is_alive()
    timers.stop(timeout=5)
    assert not thread.is_alive() and ran == []
    timers(0.0, lambda: ran.append("after stop")).start()
    assert timers._thread is thread and ran == []


def test_cancelled_calls_leave_the_queue_and_wake_the_thread_no_more_than_one_window():
    """Each job schedules a window call and cancels it ms later: the thread must not wake
    once per cancelled call (a context switch per job), only when a live call is due."""
    timers = TimerThread()
    ran: list[str] = []
    wakes = 0
    try:
        timers(0.01, lambda: ran.append("first")).start()  # starts the thread
        wait_for(lambda: ran == ["first"], 5)
        original_wait = timers._cond.wait

        def counting_wait(timeout: float | None = None) -> bool:
            nonlocal wakes
            wakes += 1
            return original_wait(timeout)

        timers._cond.wait = counting_wait  # type: ignore[method-assign]
        for _ in range(50):  # 50 "jobs", each window cancelled at once
            call = timers(0.3, lambda: ran.append("cancelled"))
            call.start()
            call.cancel()
        assert not timers._heap  # gone at once, not left for the thread to wake up to
        timers(0.4, lambda: ran.append("last")).start()
        wait_for(lambda: ran == ["first", "last"], 5)
        assert not timers._heap
        assert wakes <= 4  # about: asleep, woken for the first window, once at its end, the last
    finally:
        timers.stop()


def test_a_ticking_thread_is_not_woken_for_a_call_due_after_its_next_tick_and_runs_it_when_due():
    """A fast job's progress window: scheduled while the thread ticks, it costs the job's
    thread no wake-up of the timer thread, and still runs on time."""
    timers = TimerThread(tick=0.02, linger=30.0)
    ran: list[float] = []
    try:
        timers(0.0, lambda: None).start()  # starts the thread, which then ticks
        notified = count_notifies(timers)
        done = threading.Event()
        scheduled_at = time.monotonic()
        timers(0.1, lambda: (ran.append(time.monotonic()), done.set())).start()
        for _ in range(20):  # windows of jobs that ended within them
            call = timers(0.1, lambda: ran.append(-1.0))
            call.start()
            call.cancel()
        assert notified() == 0
        assert done.wait(5)
        assert ran[0] >= scheduled_at + 0.1 and ran == ran[:1]
    finally:
        timers.stop()


def test_the_thread_ticks_only_while_calls_keep_coming_and_never_past_a_call_due_sooner():
    now = [100.0]
    timers = TimerThread(clock=lambda: now[0], tick=0.02, linger=1.0)
    with timers._cond:
        assert timers.wake_time(100.0) == float("inf")  # nothing ever scheduled: no tick
    timers._thread = threading.current_thread()  # keep the real thread out of this test
    call = timers(0.01, lambda: None)
    call.start()
    try:
        with timers._cond:
            assert timers.wake_time(100.0) == 100.01  # the call is due before the tick
        call.cancel()
        with timers._cond:
            assert timers.wake_time(100.5) == 100.52  # calls keep coming: a tick
            assert timers.wake_time(101.0) == float("inf")  # a linger without calls: asleep
    finally:
        timers._thread = None
        timers.stop()


def test_without_a_tick_an_idle_thread_sleeps_until_a_call_is_scheduled():
    timers = TimerThread()
    call = timers(30.0, lambda: None)
    try:
        call.start()
        wait_for(lambda: timers._wake_at != float("inf"), 5)
        call.cancel()
        with timers._cond:
            assert timers.wake_time(time.monotonic()) == float("inf")
    finally:
        timers.stop()
