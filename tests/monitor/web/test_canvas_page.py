"""The canvas of a chain, group or chord member: the whole tree from its root, each node's state
live, in headless Chromium against a real monitor and a plain Celery app's real worker (issue 28,
point 2)."""

from __future__ import annotations

import pytest
from celery import chain, chord, group

from tests.helpers import wait_for
from tests.monitor import browser, plain_app

plain_worker = plain_app.plain_worker
chromium = browser.chromium

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_chord_members_page_draws_the_whole_tree_from_its_root_with_live_states(start_monitor, plain_worker,
                                                                                   chromium):
    monitor = start_monitor("m.db")
    plain = plain_worker
    # Given a chain: a first task, then a chord of a slow member and two quick ones, summed by a body
    header = group(plain.signature("plain.slow", args=(5, 3), immutable=True),
                   plain.signature("plain.add", args=(1, 1), immutable=True),
                   plain.signature("plain.add", args=(2, 2), immutable=True))
    result = chain(plain.signature("plain.add", args=(0, 1)),
                   chord(header, plain.signature("plain.tsum"))).apply_async()
    # When the page of one quick member is opened while the slow one still runs
    quick = wait_for(lambda: next((j for j in monitor.get("/api/jobs", params={"name": "plain.add"}).json()["jobs"]
                                   if j["args"] == "(1, 1)"), None), 20,
                     what="a chord member on the monitor")
    context = chromium.new_context(viewport=browser.LAPTOP)
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{monitor.url}/jobs/{quick['id']}")
        # Then the tree is drawn from its root: the first task, its chord members below
        page.wait_for_selector("#canvas-tree")
        root = monitor.get(f"/api/jobs/{quick['id']}/canvas").json()["root"]
        page.wait_for_selector(f"#canvas-tree > li[data-task-id='{root}']")
        slow = wait_for(lambda: next((j for j in monitor.get("/api/jobs", params={"name": "plain.slow"}).json()["jobs"]
                                      ), None), 20, what="the slow member on the monitor")
        page.wait_for_selector(f"#canvas-tree li[data-task-id='{slow['id']}'][data-status='processing']")
        # And the slow member's state changes live, then the body appears, completed
        assert result.get(timeout=60) == 11
        page.wait_for_selector(f"#canvas-tree li[data-task-id='{slow['id']}'][data-status='completed']")
        page.wait_for_selector(f"#canvas-tree li[data-task-id='{result.id}'][data-status='completed']")
        tree = monitor.get(f"/api/jobs/{result.id}/canvas").json()
        assert {n["name"] for n in tree["nodes"]} >= {"plain.add", "plain.slow", "plain.tsum"}
        assert len(tree["nodes"]) == 5 and tree["root"] == root
        assert next(n for n in tree["nodes"] if n["id"] == root)["name"] == "plain.add"  # the chain's first task
        assert page.locator("#canvas-tree li").count() == 5
    finally:
        context.close()


def test_the_canvas_of_an_unknown_job_is_a_404(start_monitor):
    monitor = start_monitor("m.db")
    answer = monitor.get("/api/jobs/no-such-job/canvas")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
