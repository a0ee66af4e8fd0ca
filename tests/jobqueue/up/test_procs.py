"""The one helper module for child processes and event listeners (supervisor, tests, bench)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from jobqueue.up.procs import ChildProcess, EventListener, wait_until
from jobqueue.worker.loop import IntervalLoop
from tests.helpers import wait_for

#: A parent that starts a grandchild in its own group and prints the grandchild's pid.
PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "print(child.pid, flush=True)\n"
          "time.sleep(60)\n")


def test_stopping_a_child_process_stops_its_grandchildren_and_keeps_its_output(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", PARENT], log_path=tmp_path / "child.log").start()
    pid_text = wait_for(lambda: child.log_text().strip(), 10, what="the grandchild's pid")
    grandchild = psutil.Process(int(pid_text))
    child.stop(timeout=5)
    assert not child.alive() and child.exited_with() == -signal.SIGTERM
    wait_for(lambda: not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE, 10,
             what="the grandchild to be gone")
    assert child.log_text().strip() == pid_text


def test_a_child_log_is_appended_to_unless_asked_to_start_from_scratch(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    for append in (True, True, False):
        child = ChildProcess([sys.executable, "-c", "print('line')"], log_path=log, append=append).start()
        wait_for(lambda c=child: c.exited_with() is not None, 10, what="the child to exit")
        child.stop()
    assert log.read_text().splitlines() == ["line"]


def test_wait_until_returns_the_first_truthy_value_or_raises_the_error_asked_for() -> None:
    values = iter([0, None, "ready"])
    assert wait_until(lambda: next(values), 5, interval=0.01) == "ready"
    with pytest.raises(TimeoutError, match="the never thing: last=False"):
        wait_until(lambda: False, 0.05, interval=0.01, what="the never thing")
    with pytest.raises(AssertionError):
        wait_until(lambda: False, 0.05, interval=0.01, error=AssertionError)


def test_an_event_listener_hands_every_event_to_its_callback_until_stopped(app: Any) -> None:
    heard: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_event(event: dict[str, Any]) -> None:
        with lock:
            heard.append(event)

    listener = EventListener(app, on_event, name="test-listener").start()
    assert listener.subscribed
    with app.events.default_dispatcher() as dispatcher:
        def heard_probe() -> bool:
            dispatcher.send("jobqueue-probe", probe="p1")
            with lock:
                return any(e.get("probe") == "p1" for e in heard)

        wait_for(heard_probe, 10, interval=0.1, what="the listener to hear a probe")
    listener.stop(5)
    assert not listener.is_alive


def test_an_interval_loop_survives_a_failing_round_and_stops() -> None:
    rounds: list[int] = []

    def tick() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("boom")

    loop = IntervalLoop(tick, interval=0.02, name="test-loop").start()
    wait_for(lambda: loop.ticks >= 3, 5, what="three rounds")
    loop.stop()
    assert not loop.is_alive
    with pytest.raises(ValueError):
        IntervalLoop(tick, interval=0, name="bad")
