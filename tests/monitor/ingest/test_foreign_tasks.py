"""A plain Celery app's tasks on a real worker are first-class rows on a real monitor: name,
args and kwargs (secrets masked), parent and root of a chain's members and their children,
a countdown task shown scheduled until it starts, filters by task name and search in args
(issue 28, point 1)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from celery import chain

from monitor.merge.fields import MAX_ARGS
from tests.helpers import wait_for
from tests.monitor import browser, plain_app

plain_worker = plain_app.plain_worker
chromium = browser.chromium

pytestmark = pytest.mark.timeout(180)


def job(monitor: Any, task_id: str) -> dict[str, Any] | None:
    answer = monitor.get(f"/api/jobs/{task_id}")
    return answer.json() if answer.status_code == 200 else None


def test_a_plain_apps_chain_shows_args_kwargs_parents_and_children(start_monitor, plain_worker, chromium):
    monitor = start_monitor("m.db")
    plain = plain_worker
    # When a chain of three runs, its last link with a secret-looking keyword argument
    result = chain(plain.signature("plain.add", args=(1, 2)), plain.signature("plain.add", args=(10,)),
                   plain.signature("plain.mul", args=(2,), kwargs={"password": "hunter2"})).apply_async()
    assert result.get(timeout=30) == 26
    last, middle, first = result.id, result.parent.id, result.parent.parent.id

    def ended() -> Any:
        rows = [job(monitor, i) for i in (first, middle, last)]
        return rows if all(r and r["status"] == "completed" for r in rows) else None

    rows = wait_for(ended, 30, what="the chain's three tasks completed on the monitor")
    head, link, tail = rows
    # Then each shows its name and args as the events carried them, the secret masked
    assert head["name"] == "plain.add" and head["args"] == "(1, 2)"
    assert tail["name"] == "plain.mul" and "hunter2" not in (tail["kwargs"] or "") and "password" in tail["kwargs"]
    # And the chain is tied together: parents, the root, children
    assert (link["parent_id"], tail["parent_id"]) == (first, middle)
    assert {head["root_id"] or first, link["root_id"], tail["root_id"]} == {first}
    assert head["children"] == [middle] and link["children"] == [last]
    # And a task is found by its name and by the text of its args
    found = monitor.get("/api/jobs", params={"name": "plain.mul"}).json()["jobs"]
    assert [j["id"] for j in found] == [last]
    assert first in [j["id"] for j in monitor.get("/api/jobs", params={"q": "(1, 2)"}).json()["jobs"]]
    # And the middle link's page shows its task, args, parent and child, each a link to its page
    context = chromium.new_context(viewport=browser.LAPTOP)
    try:
        page = context.new_page()
        page.goto(f"{monitor.url}/jobs/{middle}")
        page.wait_for_selector("#job-detail dd:has-text('plain.add')")
        assert link["args"] == "(3, 10)"  # a chain link gets the previous result first
        assert page.locator("#job-detail dd:has-text('(3, 10)')").count() == 1
        page.click(f"#job-detail .children a.task-link[href='/jobs/{last}']")
        page.wait_for_selector(f"body[data-job-id='{last}'] #job-detail dd:has-text('plain.mul')")
        assert page.locator(f"#job-detail a.task-link[href='/jobs/{middle}']").count() >= 1
        # And the stats page counts the tasks per task name
        page.goto(f"{monitor.url}/stats")
        page.wait_for_selector("#table-tasks tr:has(td:text-is('plain.add')) td:text-is('2')")
        page.wait_for_selector("#table-tasks tr:has(td:text-is('plain.mul')) td:text-is('1')")
    finally:
        context.close()


def test_a_countdown_task_is_scheduled_until_it_starts(start_monitor, plain_worker):
    monitor = start_monitor("m.db")
    plain = plain_worker
    # When a task is sent with a 4 s countdown
    sent = plain.send_task("plain.add", args=(2, 2), countdown=4)
    # Then the monitor shows it scheduled, with its ETA, before it runs
    row = wait_for(lambda: (r := job(monitor, sent.id)) and r["scheduled"] and r, 10, what="scheduled")
    assert row["eta"] is not None and row["started_at"] is None
    # And no longer once it ran
    assert sent.get(timeout=30) == 4
    done = wait_for(lambda: (r := job(monitor, sent.id)) and r["status"] == "completed" and r, 15, what="done")
    assert done["scheduled"] is False and done["eta"] == row["eta"]


def test_args_and_kwargs_longer_than_the_bound_are_stored_cut_at_it(start_monitor, plain_worker, tmp_path):
    monitor = start_monitor("m.db")
    plain = plain_worker
    # When a sender that raised Celery's repr limits (1,024 by default) sends one task whose
    # args and one whose kwargs are some 70,000 characters as the events carry them
    plain.amqp.argsrepr_maxsize = plain.amqp.kwargsrepr_maxsize = 200_000
    values = list(range(12_000))
    by_args = plain.send_task("plain.tsum", args=(values,))
    by_kwargs = plain.send_task("plain.tsum", kwargs={"values": values})
    assert by_args.get(timeout=30) == by_kwargs.get(timeout=30) == sum(values)

    def stored(task_id: str) -> dict[str, Any] | None:
        row = job(monitor, task_id)
        return row if row and row["status"] == "completed" else None

    args_row = wait_for(lambda: stored(by_args.id), 30, what="the task with long args completed on the monitor")
    kwargs_row = wait_for(lambda: stored(by_kwargs.id), 30, what="the task with long kwargs completed on the monitor")
    # Then the store keeps their first 10,000 characters, marked as cut, and no more
    assert len(args_row["args"]) == MAX_ARGS + 1 and args_row["args"].endswith("…")
    assert args_row["args"].startswith("([0, 1, 2, 3")
    assert len(kwargs_row["kwargs"]) == MAX_ARGS + 1 and kwargs_row["kwargs"].startswith("{'values': [0, 1, 2")
    # And the SQLite row holds no more than that either (what a page or /api/jobs?q= reads)
    with sqlite3.connect(tmp_path / "m.db") as db:
        sizes = db.execute("SELECT length(task) FROM jobs WHERE id IN (?, ?)", (by_args.id, by_kwargs.id)).fetchall()
    assert len(sizes) == 2 and all(MAX_ARGS < size < MAX_ARGS + 2_000 for (size,) in sizes)
