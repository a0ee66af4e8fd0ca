"""The dashboard and the client page in a real headless Chromium.

Everything is real: the monitor runs as its own process on the test's Redis database, workers
are ``celery worker`` subprocesses, jobs go through the broker, and the browser sees only what
the monitor's REST API and websocket give it. Nothing in the pages is reloaded: each test marks
the document when it opens it and checks the mark is still there at the end.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.shared.names import RUN_JOB_TASK
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import PHONE, TOKEN, Pages, log_in, screenshot

# The browser and monitor fixtures live in tests/monitor/browser.py.
chromium = browser.chromium
start_monitor = browser.start_monitor
live_monitor = browser.live_monitor
pages = browser.pages

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

#: What an attacker would like the dashboard to run.
XSS = "<img src=x onerror=alert(1)>"

#: Every job row of a list: id -> status and progress percent (None without a bar).
JOB_ROWS_JS = """(sel) => Object.fromEntries([...document.querySelectorAll(sel + ' .job-row[data-job-id]')].map(
  (r) => [r.dataset.jobId, {status: r.dataset.status,
    percent: r.querySelector('.progress') ? parseFloat(r.querySelector('.progress').dataset.percent) : null}]))"""

#: Records, inside the page, every status and percent each job row ever showed.
RECORD_PROGRESS_JS = """(sel) => {
  window.__seen = {};
  const root = document.querySelector(sel);
  const look = () => {
    for (const r of root.querySelectorAll('.job-row[data-job-id]')) {
      const s = (window.__seen[r.dataset.jobId] ||= {statuses: [], percents: []});
      const bar = r.querySelector('.progress');
      if (bar) { const v = parseFloat(bar.dataset.percent); if (s.percents[s.percents.length - 1] !== v) s.percents.push(v); }
      if (s.statuses[s.statuses.length - 1] !== r.dataset.status) s.statuses.push(r.dataset.status);
    }
  };
  new MutationObserver(look).observe(root, {childList: true, subtree: true, attributes: true});
  look();
}"""

#: The fleet as a page shows it: workers, their state, badges and counts (ages left out).
FLEET_JS = """() => [...document.querySelectorAll('[data-worker]')].map((w) => ({
  name: w.dataset.worker,
  status: w.querySelector('.worker-head .pill').dataset.status,
  badges: [...w.querySelectorAll('.badge')].map((b) => b.dataset.service + '=' + b.dataset.status + ':' +
    (b.querySelector('.badge-message') ? b.querySelector('.badge-message').textContent : '')),
  processed: w.querySelector('.processed').textContent,
  failed: w.querySelector('.failed').textContent,
  current: w.querySelector('.current a') ? w.querySelector('.current a').title : null,
  warning: w.querySelector('.identity-warning') ? w.querySelector('.identity-warning').textContent : null,
})).sort((a, b) => a.name.localeCompare(b.name))"""


def job_rows(page: Any, selector: str = "#jobs") -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = page.evaluate(JOB_ROWS_JS, selector)
    return rows


def all_in(page: Any, ids: list[str], statuses: set[str], selector: str = "#jobs") -> bool:
    rows = job_rows(page, selector)
    return all(rows.get(i, {}).get("status") in statuses for i in ids)


def submit(monitor: Any, payload: dict[str, Any], count: int = 1, service: str = "simulation") -> list[str]:
    res = monitor.post("/api/jobs", {"service": service, "payload": payload, "count": count})
    assert res.status_code == 201, res.text
    return [job["id"] for job in res.json()["jobs"]]


def assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__openedOnce === true"), "the page was reloaded"


def assert_nothing_ran(pages: Pages, page: Any) -> None:
    """No dialog opened, no script error, and no attacker <img> made it into the DOM."""
    assert pages.dialogs == [], pages.dialogs
    assert pages.errors == [], pages.errors
    assert page.locator('img[src="x"]').count() == 0


def test_a_batch_submitted_from_the_client_page_advances_live_on_a_dashboard_opened_before(start_worker, pages):
    # Given a worker and a jobs dashboard that is open before anything is submitted
    start_worker("gpu0")
    dashboard = pages.open("/jobs")
    dashboard.evaluate(RECORD_PROGRESS_JS, "#jobs")
    client = pages.open("/client")
    log_in(client, TOKEN)
    client.wait_for_function("document.body.classList.contains('can-control')")

    # When a batch of 3 is submitted from the client page (its output is hostile text)
    client.select_option("#service", "simulation")
    client.fill("#payload", json.dumps({"steps": 8, "step_seconds": 0.25, "output": XSS}))
    client.fill("#count", "3")
    client.click("#submit")
    client.wait_for_function("document.querySelectorAll('#submitted .job-row[data-job-id]').length === 3")
    ids = list(job_rows(client, "#submitted"))

    # Then the dashboard sees every job finish, without a reload
    wait_for(lambda: all_in(dashboard, ids, {"completed"}), 60, what="3 jobs completed on the dashboard")
    screenshot(dashboard, "jobs-after-batch")
    seen = dashboard.evaluate("window.__seen")
    for job_id in ids:
        percents = seen[job_id]["percents"]
        partial = [p for p in percents if 0 < p < 100]
        # ... and each bar advanced through real steps, never backwards
        assert len(set(partial)) >= 2, (job_id, percents)
        assert percents == sorted(percents), (job_id, percents)
        assert "processing" in seen[job_id]["statuses"] and seen[job_id]["statuses"][-1] == "completed"
    assert_not_reloaded(dashboard)

    # And the client page shows the outputs, as text
    wait_for(lambda: all_in(client, ids, {"completed"}, "#submitted"), 30, what="client page sees completion")
    client.wait_for_selector("#submitted .output-text")
    assert XSS in client.inner_text("#submitted")
    screenshot(client, "client-after-batch")
    assert_nothing_ran(pages, client)
    assert_nothing_ran(pages, dashboard)


def test_a_connector_whose_service_goes_down_turns_its_badge_to_error_live_and_back_to_idle(
        start_worker, pages, tmp_path: Path):
    # Given a worker whose simulated service can be switched off, and the fleet page open
    down = tmp_path / "simulation-down"
    fleet = pages.open("/")
    worker = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down), HEALTH_INTERVAL="0.5")
    badge = f'[data-worker="{worker.node_name}"] .badge[data-service="simulation"]'
    fleet.wait_for_selector(badge + '[data-status="idle"]')

    # When the service goes down, the badge turns to error with the reason, live
    down.touch()
    fleet.wait_for_selector(badge + '[data-status="error"]')
    assert "error" in fleet.inner_text(badge)
    assert "down" in fleet.inner_text(badge + " .badge-message")
    screenshot(fleet, "fleet-connector-error")

    # When it comes back, the badge is idle again
    down.unlink()
    fleet.wait_for_selector(badge + '[data-status="idle"]')
    assert_not_reloaded(fleet)
    assert_nothing_ran(pages, fleet)


def test_a_page_opened_at_the_end_shows_what_a_page_open_throughout_shows(
        start_worker, pages, live_monitor, tmp_path: Path):
    # Given fleet and jobs pages open before any worker exists
    down = tmp_path / "simulation-down"
    early_fleet = pages.open("/")
    early_jobs = pages.open("/jobs")

    # When a worker starts, runs jobs (two succeed, one fails) and then its service goes down
    worker = start_worker("gpu0", SIMULATION_DOWN_FILE=str(down), HEALTH_INTERVAL="0.5")
    ok = submit(live_monitor, {"steps": 3, "step_seconds": 0.2, "output": "fine"}, count=2)
    bad = submit(live_monitor, {"steps": 5, "step_seconds": 0.2, "fail_at_step": 2})
    wait_for(lambda: all_in(early_jobs, ok, {"completed"}) and all_in(early_jobs, bad, {"failed"}), 60,
             what="jobs finished on the early page")
    down.touch()
    badge = f'[data-worker="{worker.node_name}"] .badge[data-service="simulation"][data-status="error"]'
    early_fleet.wait_for_selector(badge)

    # Then pages opened now show the same workers, badges and jobs
    late_fleet = pages.open("/")
    late_jobs = pages.open("/jobs")
    late_fleet.wait_for_selector(badge)
    wait_for(lambda: early_fleet.evaluate(FLEET_JS) == late_fleet.evaluate(FLEET_JS), 15,
             what=f"same fleet: {early_fleet.evaluate(FLEET_JS)} vs {late_fleet.evaluate(FLEET_JS)}")
    fleet = late_fleet.evaluate(FLEET_JS)
    assert [w["name"] for w in fleet] == [worker.node_name]
    wait_for(lambda: job_rows(early_jobs) == job_rows(late_jobs), 15,
             what=f"same jobs: {job_rows(early_jobs)} vs {job_rows(late_jobs)}")
    assert set(ok + bad) <= set(job_rows(late_jobs))
    assert "simulated failure at step 2" in late_jobs.inner_text(f'[data-job-id="{bad[0]}"]')
    assert_not_reloaded(early_fleet)
    assert_not_reloaded(early_jobs)

    # And the views are saved as screenshots, on a laptop and on a phone
    screenshot(late_fleet, "fleet")
    screenshot(late_jobs, "jobs")
    stats = pages.open("/stats")
    stats.wait_for_selector("#chart-times svg")
    stats.wait_for_selector("#chart-throughput svg")
    assert "simulated failure at step 2" in stats.inner_text("#failures")
    # ... and the hourly history (kept after pruning) has this hour's bar and the totals
    stats.wait_for_selector("#chart-history svg g.hour")
    history = stats.evaluate("[...document.querySelectorAll('#table-history tbody td')].map((td) => td.textContent)")
    assert history == ["simulation", "2", "1", "0", "0"]  # completed, failed, timed out, cancelled
    screenshot(stats, "stats")
    for path in ("/", "/jobs", "/stats"):
        phone = pages.open(path, viewport=PHONE)
        if path == "/stats":
            phone.wait_for_selector("#chart-times svg")
        else:
            phone.wait_for_selector("[data-worker]" if path == "/" else "#jobs .job-row[data-job-id]")
        # Readable on a phone: nothing wider than the screen
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
        screenshot(phone, "phone-" + (path.strip("/") or "fleet"))
    assert pages.errors == []
    # And the worker's counts include the failed job
    assert fleet[0]["processed"] == "3" and fleet[0]["failed"] == "1", f"worker counts wrong: {fleet}"


def test_cancel_on_the_job_page_needs_a_login_and_works_with_one(start_worker, pages, live_monitor):
    # Given a long job running, and its page open without logging in
    start_worker("gpu0")
    [job_id] = submit(live_monitor, {"steps": 400, "step_seconds": 0.1})
    page = pages.open(f"/jobs/{job_id}")
    page.wait_for_selector('#job-status [data-status="processing"]')

    # Then no cancel control is shown, and the API refuses a cancel without valid credentials
    assert page.locator("[data-control=cancel]").count() == 0
    assert page.is_visible("#login-open")
    refused = page.evaluate("""async (id) => [
        (await fetch('/api/jobs/' + id + '/cancel', {method: 'POST'})).status,
        (await fetch('/api/jobs/' + id + '/cancel', {method: 'POST', headers: {Authorization: 'Bearer wrong'}})).status]""",
                            job_id)
    assert all(status in (401, 403) for status in refused), refused
    assert live_monitor.get(f"/api/jobs/{job_id}")["status"] == "processing"

    # When the user logs in with a wrong token, still no control
    log_in(page, "not-the-token")
    page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
    assert page.locator("[data-control=cancel]").count() == 0

    # When the user logs in with the right token and clicks cancel
    page.fill("#login-token", TOKEN)
    page.click("#login-form button[type=submit]")
    page.click("#job-controls [data-control=cancel]")

    # Then the job ends cancelled, live on the same page
    page.wait_for_selector('#job-status [data-status="cancelled"]', timeout=30_000)
    assert live_monitor.get(f"/api/jobs/{job_id}")["status"] == "cancelled"
    assert page.locator("[data-control=cancel]").count() == 0
    screenshot(page, "job-cancelled")

    # And the cancelled job can be retried from the same page, as a new job
    page.click("#job-controls [data-control=retry]")
    page.wait_for_function("document.getElementById('notice').textContent.startsWith('retried as ')")
    new_id = page.inner_text("#notice").removeprefix("retried as ").strip()
    assert new_id and new_id != job_id
    # (the monitor learns of the new job from its task-sent event: wait for it)
    assert wait_for(lambda: job_status(live_monitor, new_id), 30, what="the monitor to see the retried job")
    assert_not_reloaded(page)
    assert_nothing_ran(pages, page)


def consumed_queues(app: Any, node: str) -> list[str]:
    replies = app.control.inspect(destination=[node], timeout=2.0).active_queues() or {}
    return sorted(q["name"] for q in replies.get(node, []))


def test_a_logged_in_user_drains_and_resumes_a_worker_from_the_fleet_page(app, start_worker, pages, live_monitor):
    # Given a worker and the fleet page, logged in
    worker = start_worker("gpu0")
    page = pages.open("/", token=TOKEN)
    card = f'[data-worker="{worker.node_name}"]'
    page.wait_for_selector(f'{card} .worker-head [data-status="online"]')

    # When the user drains it, the card says draining and a job submitted now waits
    page.click(f"{card} [data-control=drain]")
    page.wait_for_selector(f'{card} .worker-head [data-status="draining"]')
    wait_for(lambda: consumed_queues(app, worker.node_name) == [], 15, what="the worker to stop consuming")
    [job_id] = submit(live_monitor, {"steps": 1, "step_seconds": 0})
    jobs = pages.open("/jobs")
    jobs.wait_for_selector(f'[data-job-id="{job_id}"][data-status="queued"]')

    # When the user resumes it, the card is online again and the job runs to the end
    page.click(f"{card} [data-control=resume]")
    page.wait_for_selector(f'{card} .worker-head [data-status="online"]')
    jobs.wait_for_selector(f'[data-job-id="{job_id}"][data-status="completed"]')
    assert_not_reloaded(page)
    assert_nothing_ran(pages, page)


def test_a_read_only_monitor_shows_no_controls_and_refuses_every_action(chromium, start_monitor):
    # Given a monitor in read-only mode (it has a token, which must not help)
    monitor = start_monitor(JOBQUEUE_MONITOR_READ_ONLY="1")
    opened = Pages(chromium, monitor.url)
    try:
        page = opened.open("/", token=TOKEN)
        # Then the page says read-only and offers no login and no control
        page.wait_for_function("document.getElementById('auth-state').textContent === 'read-only'")
        assert not page.is_visible("#login-open")
        assert page.locator("[data-control]").count() == 0
        # And the API refuses an action even with the right token
        res = monitor.post("/api/jobs", {"service": "simulation", "payload": {"steps": 1}})
        assert res.status_code == 403, res.text
    finally:
        opened.close()


def test_a_hostile_error_message_is_shown_as_text_everywhere(app, settings, pages, live_monitor):
    # Given a job whose failure message is HTML, reported on the real event stream
    job_id = str(uuid.uuid4())
    hostname = f"gpu0@{settings.machine_id}"
    meta = json.dumps({"service": "simulation", "priority": 5, "queue": "simulation"})
    jobs_page = pages.open("/jobs")
    with app.events.default_dispatcher(hostname=hostname) as dispatcher:
        dispatcher.send("task-received", uuid=job_id, name=RUN_JOB_TASK, args="()", kwargs=meta, retries=0)
        dispatcher.send("task-started", uuid=job_id)
        dispatcher.send("task-failed", uuid=job_id, exception=f"ExecutionFailed({XSS!r})", traceback="")

    # Then the jobs list, the job page and the stats page show it as text, and nothing runs
    row = f'#jobs [data-job-id="{job_id}"][data-status="failed"] .job-error'
    jobs_page.wait_for_selector(row)
    assert XSS in jobs_page.inner_text(row)
    job_page = pages.open(f"/jobs/{job_id}")
    job_page.wait_for_selector("#job-detail .error-box .job-error")
    assert job_page.inner_text("#job-detail .error-box .job-error") == XSS
    job_page.wait_for_selector('#timeline [data-type="task-failed"]')
    stats_page = pages.open("/stats")
    stats_page.wait_for_function("(text) => document.getElementById('failures').textContent.includes(text)", arg=XSS)
    for page in (jobs_page, job_page, stats_page):
        assert_nothing_ran(pages, page)


def test_pages_are_served_with_escaped_job_ids(live_monitor):
    # Given a job id that is HTML
    res = requests.get(live_monitor.url + "/jobs/" + requests.utils.quote('"><img src=x onerror=alert(1)>', safe=""),
                       timeout=10)
    # Then the shell carries it escaped, never as markup
    assert res.status_code == 200
    assert "<img" not in res.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in res.text


def test_every_page_of_the_dashboard_is_served_with_its_assets(live_monitor):
    for path in ("/", "/jobs", "/stats", "/client", "/jobs/some-id"):
        res = requests.get(live_monitor.url + path, timeout=10)
        assert res.status_code == 200, path
        assert "text/html" in res.headers["Content-Type"]
        for asset in ("/ui-static/js/common.js", "/ui-static/css/app.css"):
            assert asset in res.text
    for asset in ("js/common.js", "js/fleet.js", "js/jobs.js", "js/job.js", "js/stats.js", "js/client.js", "css/app.css"):
        assert requests.get(f"{live_monitor.url}/ui-static/{asset}", timeout=10).status_code == 200, asset


def test_an_output_image_on_the_monitors_disk_is_served_sandboxed_and_nothing_outside_it(live_monitor, settings):
    # Given a job the monitor knows, an output image a worker on this host wrote for it, and a
    # secret next to the outputs
    [job] = live_monitor.post("/api/jobs", {"service": "simulation", "payload": {"steps": 1}}).json()["jobs"]
    wait_for(lambda: job_status(live_monitor, job["id"]), 30, what="the monitor to know the job")
    job_dir = Path(settings.output_dir) / job["id"]
    job_dir.mkdir(parents=True)
    (job_dir / "out.png").write_bytes(b"\x89PNG\r\n\x1a\nnot-really")
    (Path(settings.output_dir) / "secret.txt").write_text("no")
    # Then the image is served, under a CSP sandbox
    res = requests.get(f"{live_monitor.url}/jobs/{job['id']}/files/out.png", timeout=10)
    assert res.status_code == 200 and res.headers["Content-Type"] == "image/png"
    assert "sandbox" in res.headers["Content-Security-Policy"]
    # And nothing outside a job's directory can be reached
    for path in (f"/jobs/{job['id']}/files/..%2Fsecret.txt", "/jobs/..%2F/files/secret.txt", "/jobs/job-2/files/out.png"):
        assert requests.get(live_monitor.url + path, timeout=10).status_code == 404, path


#: A queued job row's expected-wait text and a processing row's ETA text.
ROW_TEXT_JS = """(id) => { const r = document.querySelector('#jobs .job-row[data-job-id="' + id + '"]');
  return r ? r.querySelector('.c-detail').textContent : null; }"""


def job_status(monitor: Any, job_id: str) -> str | None:
    """The job's status on the monitor (None until the monitor has seen it)."""
    res = requests.get(f"{monitor.url}/api/jobs/{job_id}", timeout=10)
    return None if res.status_code == 404 else res.json()["status"]


def test_a_workflow_shows_its_steps_together_with_live_etas_and_payload_summaries(app, start_worker, pages, live_monitor):
    from jobqueue.client.workflows import submit_workflow

    # Given a worker (one job at a time) whose service has a known completion-time median
    start_worker("gpu0")
    warm = submit(live_monitor, {"steps": 2, "step_seconds": 0.1, "output": "warm"})
    wait_for(lambda: job_status(live_monitor, warm[0]) == "completed", 30, what="warm-up job")
    jobs_page = pages.open("/jobs")
    # And a long job that keeps the worker busy
    busy = submit(live_monitor, {"steps": 30, "step_seconds": 0.2, "output": "busy"})
    wait_for(lambda: job_status(live_monitor, busy[0]) == "processing", 30, what="busy job running")

    # When a 3-step workflow is submitted behind it
    quick = {"steps": 2, "step_seconds": 0.1, "output": "step"}
    flow = submit_workflow([("simulation", quick)] * 3, priority=7, app=app)
    first, second = flow.steps[0].id, flow.steps[1].id
    wait_for(lambda: job_rows(jobs_page).get(first, {}).get("status") == "queued", 20, what="step 1 queued on the page")

    # Then the jobs page shows its step, priority, queue position and the expected wait the
    # API computes, and the running job a counting-down ETA — from deltas alone
    row = jobs_page.inner_text(f'#jobs [data-job-id="{first}"]')
    assert "step 1 of 3" in row and "p7" in row
    api_wait = live_monitor.get(f"/api/jobs/{first}")["eta_seconds"]
    assert isinstance(api_wait, float) and api_wait > 0
    # (the page shows the server's estimate, asked after the delta that queued the step and
    # counted down since: it differs from the API's by the time in between)
    # (an estimate asked before the busy job's ETA reached the server is replaced by the next
    # one, asked after the next change: the page converges to the API's figure)
    def agrees() -> tuple[str, float] | None:
        text = jobs_page.evaluate(ROW_TEXT_JS, first)
        now_wait = live_monitor.get(f"/api/jobs/{first}")["eta_seconds"]
        if not (text and text.startswith("queue position 1 · expected wait ~") and isinstance(now_wait, float)):
            return None
        candidates = jobs_page.evaluate(
            "(s) => Array.from({length: 61}, (_, i) => JQ.duration(Math.max(0, s - 3 + i * 0.1)))", now_wait)
        shown = text.split(" · ")[1]
        return (text, now_wait) if any(shown == f"expected wait ~{c}" for c in candidates) else None

    wait_for(agrees, 15, interval=0.2, what="the page's estimate for step 1 to agree with the API's")
    jobs_page.wait_for_function("""(id) => /ETA \\d/.test(document.querySelector(
        '#jobs .job-row[data-job-id="' + id + '"] .eta').textContent)""", arg=busy[0])

    # And step 1's page says "step 1 of 3", lists the later steps as not queued yet, and
    # shows the payload summary
    job_page = pages.open(f"/jobs/{first}")
    job_page.wait_for_selector('#workflow-steps li[data-step="3"]')
    assert "step 1 of 3" in job_page.inner_text("#job-detail")
    assert "not queued yet" in job_page.inner_text('#workflow-steps li[data-step="2"]')
    assert "output='step' step_seconds=0.1 steps=2" in job_page.inner_text(".payload")

    # When the workflow runs to the end
    flow.wait(timeout=90)
    # Then the same page, never reloaded, links every step with its status
    job_page.wait_for_function("""() => [1, 2, 3].every((n) => {
        const li = document.querySelector('#workflow-steps li[data-step="' + n + '"]');
        return li && li.querySelector('[data-status="completed"]'); })""", timeout=30000)
    link = job_page.get_attribute('#workflow-steps li[data-step="2"] a', "href")
    assert link == f"/jobs/{second}"
    assert "completed" in job_page.inner_text("h2:has-text('Workflow')")
    assert_not_reloaded(job_page)
    assert_not_reloaded(jobs_page)
    screenshot(job_page, "job-workflow")
    assert pages.errors == []
