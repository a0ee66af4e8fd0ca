"""Why a queued job waits, in the API and on the pages (headless Chromium), and the workers'
models, VRAM and tags on the fleet page: real workers, real Redis, ComfyUI simulators."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from jobqueue.client.jobs import get_job, submit_job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.sims.comfyui.models import checkpoint_workflow
from tests.capability_fixtures import comfy_worker, start_sim
from tests.helpers import wait_for
from tests.monitor import browser

# The browser fixtures live in tests/monitor/browser.py.
chromium = browser.chromium
start_monitor = browser.start_monitor
live_monitor = browser.live_monitor
pages = browser.pages
__all__ = ["start_sim"]  # a fixture

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

NEEDS_C = "no online worker has model c.safetensors"

#: Models, VRAM and tags of every worker on the fleet page.
CAPS_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-worker]')].map((w) => [w.dataset.worker, {
  models: [...w.querySelectorAll('.models .chip')].map((c) => c.textContent),
  vram: w.querySelector('.vram').textContent,
  tags: [...w.querySelectorAll('.worker-tags .chip')].map((c) => c.textContent)}]))"""


def _reason(monitor: Any, job_id: str) -> str | None:
    res = requests.get(f"{monitor.url}/api/jobs/{job_id}", timeout=5)
    return res.json().get("waiting_for") if res.status_code == 200 else None


def test_a_job_nobody_can_run_shows_why_in_the_api_and_on_the_jobs_page_until_a_capable_worker_runs_it(
        app, start_worker, start_sim, machine_id, live_monitor, pages):
    # Given machines with checkpoints a and b, and the jobs and fleet pages open
    comfy_worker(start_worker, machine_id, "a", start_sim("a.safetensors"), worker_tags="region:eu")
    comfy_worker(start_worker, machine_id, "b", start_sim("b.safetensors", vram_gb=24))
    jobs_page = pages.open("/jobs")
    fleet = pages.open("/")
    wait_for(lambda: len(fleet.evaluate(CAPS_JS)) == 2 and all(c["models"] for c in fleet.evaluate(CAPS_JS).values()),
             30, what="the fleet page to show both workers' models")
    shown = fleet.evaluate(CAPS_JS)
    assert sorted(m for c in shown.values() for m in c["models"]) == ["a.safetensors", "b.safetensors"]
    assert sorted(c["vram"] for c in shown.values()) == ["24.0 GiB (23.5 free)", "no GPU reported"]
    assert sorted(tuple(c["tags"]) for c in shown.values()) == [(), ("region:eu",)]
    # When a job needing model c is submitted through the API
    res = live_monitor.post("/api/jobs", {"service": "comfyui", "payload": {"workflow": EXAMPLE_WORKFLOW},
                                             "requires": {"models": ["c.safetensors"]}})
    assert res.status_code == 201, res.text
    [job_id] = [j["id"] for j in res.json()["jobs"]]
    # Then it stays queued, and the API and the page (open before it was sent) say why
    wait_for(lambda: _reason(live_monitor, job_id) == NEEDS_C, 30, what="the API to say why the job waits")
    job = live_monitor.get(f"/api/jobs/{job_id}")
    assert job["status"] == "queued" and job["requires"] == {"models": ["c.safetensors"]}
    assert live_monitor.get("/api/waiting")["waiting"] == {job_id: NEEDS_C}
    row = f'#jobs .job-row[data-job-id="{job_id}"]'
    jobs_page.wait_for_selector(row + " .waiting-for")
    assert NEEDS_C in jobs_page.inner_text(row + " .waiting-for")
    assert get_job(job_id, app=app).status().value == "queued"
    # When a third machine with c and its worker start
    wc = comfy_worker(start_worker, machine_id, "c", start_sim("c.safetensors"))
    # Then the job completes there, and the page shows it completed with no reason left
    assert get_job(job_id, app=app).wait(timeout=60)["worker"] == wc.node_name
    jobs_page.wait_for_selector(row + '[data-status="completed"]')
    assert jobs_page.locator(row + " .waiting-for").count() == 0
    assert live_monitor.get(f"/api/jobs/{job_id}")["waiting_for"] is None
    assert pages.errors == []


LOADED_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-worker]')].map((w) => [w.dataset.worker,
  [...w.querySelectorAll('.loaded .chip')].map((c) => c.textContent)]))"""


def test_the_fleet_page_shows_the_checkpoint_each_worker_has_loaded_once_it_ran_a_job_with_it(
        app, start_worker, start_sim, machine_id, live_monitor, pages):
    # Given a machine with checkpoints a and b, its worker, and the fleet page open: nothing loaded
    worker = comfy_worker(start_worker, machine_id, "ab", start_sim("a.safetensors", "b.safetensors"))
    fleet = pages.open("/")
    wait_for(lambda: fleet.evaluate(LOADED_JS).get(worker.node_name) == [], 30, what="the card to show nothing loaded")
    # When a job loading b runs there
    submit_job("comfyui", {"workflow": checkpoint_workflow("b.safetensors")}, app=app).wait(timeout=60)
    # Then the worker's card shows b as loaded, as the API does
    wait_for(lambda: fleet.evaluate(LOADED_JS).get(worker.node_name) == ["b.safetensors"], 30,
             what="the card to show b loaded")
    assert live_monitor.get(f"/api/workers/{worker.node_name}")["capabilities"]["loaded"] == ["b.safetensors"]
    assert pages.errors == []
