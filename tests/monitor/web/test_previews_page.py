"""Live previews in a real headless Chromium: a ComfyUI job whose node sends previews shows an
updating preview on its job page and on its worker's card while it runs, and none once it
ended (simulator process, real worker, real monitor process, real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.client.jobs import submit_job
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.states import JobStatus
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import screenshot

chromium = browser.chromium
start_monitor = browser.start_monitor
live_monitor = browser.live_monitor
pages = browser.pages

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

#: Records, inside the page, every preview number the job page's image showed once loaded.
RECORD_PREVIEWS_JS = """() => {
  window.__previews = [];
  const seen = (img) => {
    if (img.complete && img.naturalWidth > 0 && !window.__previews.includes(img.dataset.seq)) {
      window.__previews.push(img.dataset.seq);
    }
  };
  document.addEventListener("load", (ev) => { if (ev.target.matches && ev.target.matches("img.job-preview")) seen(ev.target); }, true);
}"""


@pytest.fixture
def comfyui(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(output_dir=tmp_path / "sim", log_path=tmp_path / "sim.log").start()
    yield sim
    sim.stop()


def preview_workflow(steps: int, delay: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0x2040C0}},
        "2": {"class_type": "SimPreviewSampler", "inputs": {"image": ["1", 0], "steps": steps, "delay": delay}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "preview"}},
    }


def test_a_job_whose_node_sends_previews_shows_an_updating_preview_on_its_page_and_worker_card(
        app, start_worker, pages, live_monitor, comfyui):
    # Given a ComfyUI worker, the fleet page open, and a job whose node sends a preview with
    # each of 400 steps of 0.15 s (it runs until the test is done looking)
    worker = start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=comfyui.url)
    fleet = pages.open("/")
    handle = submit_job("comfyui", {"workflow": preview_workflow(400, 0.15)}, app=app)
    page = pages.open(f"/jobs/{handle.id}")
    page.evaluate(RECORD_PREVIEWS_JS)
    page.wait_for_selector('#job-status [data-status="processing"]')

    # Then the job page shows a live preview that keeps changing while the job runs
    page.wait_for_selector("#job-preview img.job-preview")
    page.wait_for_function("window.__previews.length >= 3", timeout=60_000)
    shown = page.evaluate("window.__previews")
    assert len(set(shown)) == len(shown) >= 3 and [int(s) for s in shown] == sorted(int(s) for s in shown)
    size = page.evaluate("(() => { const i = document.querySelector('img.job-preview'); return [i.naturalWidth, i.naturalHeight]; })()")
    assert size == [256, 256]
    # (what the browser shows is what the API serves: the worker's latest frame, a PNG)
    api = requests.get(f"{live_monitor.url}/api/jobs/{handle.id}/preview", timeout=5)
    assert api.status_code == 200 and api.headers["Content-Type"] == "image/png" and api.content.startswith(b"\x89PNG")
    assert api.headers["Cache-Control"] == "no-store" and int(api.headers["X-Preview-Seq"]) >= int(shown[-1])
    screenshot(page, "job-live-preview")

    # And the worker's card on the fleet page shows it too
    card = f'[data-worker="{worker.node_name}"] img.card-preview'
    fleet.wait_for_selector(card)
    fleet.wait_for_function(f"(() => {{ const i = document.querySelector('{card}'); return i && i.complete && i.naturalWidth > 0; }})()")

    # When the job ends (cancelled here), the preview goes from both pages
    assert handle.status() == JobStatus.PROCESSING, "the job ended before the test could look"
    assert handle.cancel()
    page.wait_for_selector('#job-status [data-status="cancelled"]')
    wait_for(lambda: page.locator("#job-preview").count() == 0, 10, what="the preview to go")
    fleet.wait_for_function(f"document.querySelector('{card}') === null")
    assert not pages.errors, pages.errors
    assert page.evaluate("window.__openedOnce === true")
