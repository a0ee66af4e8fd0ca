"""ProgressTracker: real progress only, monotonic within an attempt, an honest ETA."""

from __future__ import annotations

from typing import Any

from jobqueue.worker.progress import ProgressTracker


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_tracker(min_interval: float = 0.0) -> tuple[ProgressTracker, list[dict[str, Any]], FakeClock]:
    published: list[dict[str, Any]] = []
    clock = FakeClock()
    return ProgressTracker(published.append, clock=clock, min_interval=min_interval), published, clock


def test_steps_become_a_percent_and_each_step_is_published():
    tracker, published, clock = make_tracker()
    for step in range(5):
        clock.now += 1
        tracker.report(step=step, total_steps=4, message=f"step {step}")
    assert [p["percent"] for p in published] == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert published[2]["step"] == 2 and published[2]["total_steps"] == 4
    assert published[2]["message"] == "step 2"


def test_percent_never_goes_back_within_one_attempt():
    tracker, published, _ = make_tracker()
    tracker.report(percent=60.0)
    tracker.report(percent=40.0, message="a late report")
    assert published[-1]["percent"] == 60.0
    assert [p["percent"] for p in published] == sorted(p["percent"] for p in published)


def test_percent_is_capped_at_one_hundred():
    tracker, published, _ = make_tracker()
    tracker.report(percent=250.0)
    assert published[-1]["percent"] == 100.0


def test_nothing_is_published_without_a_report_or_for_a_repeated_one():
    tracker, published, clock = make_tracker()
    # Given no report at all: nothing moved
    assert published == []
    assert tracker.current["percent"] == 0.0 and tracker.current["eta_seconds"] is None
    # When the same report arrives twice
    tracker.report(step=1, total_steps=10)
    clock.now += 5
    assert tracker.report(step=1, total_steps=10) is None
    # Then it was published once
    assert len(published) == 1


def test_messages_alone_move_no_percent_and_invent_no_eta():
    tracker, published, clock = make_tracker()
    tracker.report(message="loading model")
    clock.now += 30
    tracker.report(message="still loading")
    assert [p["percent"] for p in published] == [0.0, 0.0]
    assert all(p["eta_seconds"] is None for p in published)


def test_eta_follows_the_observed_rate():
    tracker, published, clock = make_tracker()
    # Given half the work done after 10 s
    clock.now += 10
    tracker.report(step=5, total_steps=10)
    # Then the other half is expected to take 10 s more
    assert published[-1]["eta_seconds"] == 10.0
    # When the next step takes much longer, the estimate grows with it
    clock.now += 20
    tracker.report(step=6, total_steps=10)
    assert published[-1]["eta_seconds"] == 20.0
    clock.now += 1
    tracker.report(step=10, total_steps=10)
    assert published[-1]["eta_seconds"] == 0.0


def test_percent_only_updates_are_throttled_but_step_changes_are_not():
    tracker, published, clock = make_tracker(min_interval=1.0)
    tracker.report(percent=10.0)
    clock.now += 0.2
    assert tracker.report(percent=11.0) is None  # too soon: only the percent moved
    clock.now += 0.1
    assert tracker.report(step=2, total_steps=100) is not None  # a new step always goes out
    clock.now += 1.0
    assert tracker.report(percent=20.0) is not None
    assert [p["percent"] for p in published] == [10.0, 11.0, 20.0]


def test_a_steady_rate_after_a_slow_start_gives_an_eta_that_only_falls_to_about_one_step():
    tracker, published, clock = make_tracker()
    # Given a job whose service loads for 5 s before 20 steps of 0.05 s each
    clock.now += 5.0
    etas = []
    for step in range(1, 21):
        clock.now += 0.05
        tracker.report(step=step, total_steps=20)
        etas.append(published[-1]["eta_seconds"])
    # Then from the step where the load leaves the rate window on, the ETA never rises
    steady = etas[4:]
    assert all(later <= earlier for earlier, later in zip(steady, steady[1:], strict=False)), etas
    # And at step 19 of 20 it is about one step, at the end zero
    assert etas[18] <= 0.06 and etas[19] == 0.0


class FakeTimer:
    """A timer the test fires by hand (``threading.Timer``'s interface)."""

    def __init__(self, interval: float, function: Any) -> None:
        self.interval, self.function = interval, function
        self.daemon = False
        self.started = self.cancelled = False

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert self.started and not self.cancelled
        self.function()


def make_windowed(window: float, *, hold_start: bool = False
                  ) -> tuple[ProgressTracker, list[dict[str, Any]], FakeClock, list[FakeTimer]]:
    published: list[dict[str, Any]] = []
    clock = FakeClock()
    timers: list[FakeTimer] = []

    def timer(interval: float, function: Any) -> FakeTimer:
        timers.append(FakeTimer(interval, function))
        return timers[-1]

    tracker = ProgressTracker(published.append, clock=clock, window=window, timer=timer, hold_start=hold_start)
    return tracker, published, clock, timers


def test_steps_within_one_window_are_coalesced_into_the_latest_when_the_window_ends():
    tracker, published, clock, timers = make_windowed(0.05)
    # Given a first report, published at once
    tracker.report(step=1, total_steps=10)
    assert [p["step"] for p in published] == [1]
    # When three more steps arrive within the window
    for step in (2, 3, 4):
        clock.now += 0.01
        tracker.report(step=step, total_steps=10)
    # Then none is published yet, and one timer waits for the rest of the window
    assert [p["step"] for p in published] == [1]
    assert len(timers) == 1 and abs(timers[0].interval - 0.04) < 1e-9
    # And when the window ends only the latest goes out
    clock.now += 0.04
    timers[0].fire()
    assert [p["step"] for p in published] == [1, 4]
    # And a step after a quiet window goes out at once again
    clock.now += 1.0
    tracker.report(step=5, total_steps=10)
    assert [p["step"] for p in published] == [1, 4, 5] and len(timers) == 1


def test_closing_publishes_the_held_last_step_and_nothing_after():
    tracker, published, clock, timers = make_windowed(0.05)
    tracker.report(step=0, total_steps=2, message="starting")
    clock.now += 0.001
    tracker.report(step=2, total_steps=2, message="done")  # the last step, held by the window
    # When the attempt ends before the window does
    tracker.close()
    # Then the last step was published (once), the timer cancelled
    assert [p["step"] for p in published] == [0, 2] and timers[0].cancelled
    # And later reports and annotations publish nothing
    clock.now += 1.0
    tracker.report(step=3, total_steps=3)
    tracker.annotate(preview=7)
    assert [p["step"] for p in published] == [0, 2]


def test_a_window_that_ends_after_close_publishes_nothing():
    tracker, published, clock, timers = make_windowed(0.05)
    tracker.report(step=1, total_steps=3)
    clock.now += 0.01
    tracker.report(step=2, total_steps=3)
    tracker.close()
    timers[0].function()  # a timer that fired just as the attempt ended
    assert [p["step"] for p in published] == [1, 2]


def test_without_a_window_every_change_is_published_at_once():
    tracker, published, clock = make_tracker()
    for step in range(3):
        tracker.report(step=step, total_steps=3)  # same instant
    tracker.close()
    assert [p["step"] for p in published] == [0, 1, 2]


def test_with_the_start_held_a_job_that_succeeds_within_the_window_publishes_nothing():
    tracker, published, clock, timers = make_windowed(0.05, hold_start=True)
    # Given a first report right at the start: held for the window, not published at once
    tracker.report(step=0, total_steps=0, message="starting")
    assert published == [] and len(timers) == 1 and abs(timers[0].interval - 0.05) < 1e-9
    # When the job succeeds before the window ends, then nothing is published, ever
    clock.now += 0.01
    tracker.close(superseded=True)
    assert published == [] and timers[0].cancelled
    timers[0].function()
    assert published == []


def test_with_the_start_held_a_longer_job_publishes_its_first_report_when_the_window_ends():
    tracker, published, clock, timers = make_windowed(0.05, hold_start=True)
    tracker.report(step=1, total_steps=4)
    clock.now += 0.05
    timers[0].fire()
    assert [p["step"] for p in published] == [1]
    # And a job that fails keeps its held last report (where it stopped)
    clock.now += 0.01
    tracker.report(step=2, total_steps=4)
    tracker.close()
    assert [p["step"] for p in published] == [1, 2]


def test_with_the_workers_timers_fast_jobs_wake_no_timer_thread_and_a_longer_one_publishes_on_time():
    """The worker's timer thread ticks while jobs come: the window a fast job's first report
    opens is scheduled and cancelled without waking it; a job that runs on still has its first
    report published when the window ends."""
    import time

    from jobqueue.worker.runtime import TIMER_LINGER, TIMER_TICK
    from jobqueue.worker.task import PROGRESS_WINDOW
    from jobqueue.worker.timers import TimerThread
    from tests.helpers import count_notifies, wait_for

    timers = TimerThread(tick=TIMER_TICK, linger=TIMER_LINGER)
    try:
        def job(published: list[dict[str, Any]]) -> ProgressTracker:
            tracker = ProgressTracker(published.append, window=PROGRESS_WINDOW, hold_start=True, timer=timers)
            tracker.report(step=0, total_steps=0, message="starting")
            return tracker

        job([]).close(superseded=True)  # the first job of a busy spell starts the thread
        notified = count_notifies(timers)
        for _ in range(20):
            published: list[dict[str, Any]] = []
            job(published).close(superseded=True)
            assert published == []
        # (without the tick: one wake-up per job; a test thread stalled > 10 ms between a job's
        # start and its report may cost one)
        assert notified() <= 3
        longer: list[dict[str, Any]] = []
        started = time.monotonic()
        tracker = job(longer)
        wait_for(lambda: longer, 5, interval=0.005)
        assert time.monotonic() - started < 2 * PROGRESS_WINDOW + 0.5  # the window, give or take a busy CI
        assert [p["step"] for p in longer] == [0]
        tracker.close()
    finally:
        timers.stop()
