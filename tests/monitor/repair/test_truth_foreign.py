"""Truth for tasks nobody recorded (issue 28, point 3): a plain Celery app whose worker imports
nothing of jobqueue. A monitor started after its tasks ended shows only what the result backend
says, every other field ``null`` (unknown), never a guess; once repaired, the monitor that ran
throughout shows the same value wherever the late one knows one. Real Redis, a real worker of
the plain app, real monitor processes."""

from __future__ import annotations

from typing import Any

import pytest
from celery import chain, group

from tests.helpers import wait_for
from tests.monitor import browser, plain_app
from tests.monitor.repair.test_truth import PER_MONITOR, TIMES, job_of

plain_worker = plain_app.plain_worker
chromium = browser.chromium

pytestmark = pytest.mark.timeout(240)

#: What the result backend of a plain app (no ``result_extended``) records of a task.
BACKEND_KNOWS = {"id", "status", "result", "error", "finished_at", "parent_id", "children", "group_id"}


def guesses(early: dict[str, Any], late: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields the late monitor shows with a value the early one does not: a guess."""
    out = {}
    for key in set(late) - PER_MONITOR:
        x, y = early.get(key), late.get(key)
        if y is None or y == x or (key == "children" and y == []):
            continue
        if key in TIMES and isinstance(x, (int, float)) and isinstance(y, (int, float)) and abs(x - y) <= 0.001:
            continue
        out[key] = (x, y)
    return out


def test_a_late_monitor_shows_a_plain_apps_tasks_as_the_backend_knows_them_and_nothing_else(
        start_monitor, plain_worker, chromium):
    # Given a monitor running throughout beside a plain Celery app's worker
    early = start_monitor("early.db", monitor_repair_interval="2")
    plain = plain_worker
    # When single tasks, a failing one, a chain and a group run
    single = plain.send_task("plain.add", args=(1, 2))
    failing = plain.send_task("plain.boom")
    linked = chain(plain.signature("plain.add", args=(1, 2)), plain.signature("plain.add", args=(10,))).apply_async()
    grouped = group(plain.signature("plain.mul", args=(i, 2)) for i in range(3)).apply_async()
    assert single.get(timeout=30) == 3 and linked.get(timeout=30) == 13 and grouped.get(timeout=30) == [0, 2, 4]
    with pytest.raises(ValueError):
        failing.get(timeout=30)
    ids = [single.id, failing.id, linked.id, linked.parent.id, *[r.id for r in grouped.results]]
    wait_for(lambda: all((job_of(early, i) or {}).get("status") in ("completed", "failed") for i in ids), 30,
             what="the early monitor to show every task ended")
    # And a second monitor starts only after everything ended
    late = start_monitor("late.db", monitor_repair_interval="2")
    rows = wait_for(lambda: (r := {i: job_of(late, i) for i in ids}) and all(r.values()) and r, 30,
                    what="the late monitor to rebuild every task")
    # Then the late monitor guesses nothing: every value it shows is the early monitor's
    try:
        wait_for(lambda: not {i: g for i in ids if (g := guesses(job_of(early, i) or {}, job_of(late, i) or {}))},
                 30, interval=0.5, what="no guess on the late monitor")
    except AssertionError:
        raise AssertionError({i: guesses(job_of(early, i) or {}, job_of(late, i) or {}) for i in ids}) from None
    rows = {i: job_of(late, i) or {} for i in ids}
    # And what only the events said is unknown (null) there: times before the end, worker, args
    for task_id in ids:
        row = rows[task_id]
        assert {k: row[k] for k in ("submitted_at", "received_at", "started_at", "runtime", "args")} == dict.fromkeys(
            ("submitted_at", "received_at", "started_at", "runtime", "args")), row
    # And what the backend said is shown and equal on both: outcome, end, chain links
    for task_id in ids:
        early_row, row = job_of(early, task_id) or {}, rows[task_id]
        for key in ("status", "result", "finished_at", "parent_id"):
            assert row[key] == early_row[key], (task_id, key, row[key], early_row[key])
    assert rows[failing.id]["status"] == "failed" and rows[failing.id]["error"] is not None
    assert rows[linked.id]["parent_id"] == linked.parent.id
    assert rows[linked.parent.id]["children"] == [linked.id]
    # And its page says so: what nobody recorded reads "not seen"
    context = chromium.new_context(viewport=browser.LAPTOP)
    try:
        page = context.new_page()
        page.goto(f"{late.url}/jobs/{single.id}")
        page.wait_for_selector("#job-detail .not-seen")
        shown = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#job-detail dl.fields dt')]
            .map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))""")
        assert (shown["submitted"], shown["started"], shown["worker"]) == ("not seen",) * 3, shown
    finally:
        context.close()
