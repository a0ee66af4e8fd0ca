"""The a1111 connector on the dashboard, in a real headless Chromium: simulator over real
HTTP, real worker, real monitor process. The fleet page shows the WebUI's loaded checkpoint and
version on the connector's badge; the job page shows a running job's live preview.

The connector hands each new ``current_image`` to ``Job.report_preview``; the preview plumbing
(issue 11) forwards it to the monitor (``GET /api/jobs/<id>/preview``, ``#job-preview``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.sims.a1111.process import A1111SimulatorProcess
from tests.monitor import browser

chromium = browser.chromium
start_monitor = browser.start_monitor
live_monitor = browser.live_monitor
pages = browser.pages

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[A1111SimulatorProcess]:
    sim = A1111SimulatorProcess(step_seconds=0.1, log_path=tmp_path / "webui.log").start()
    yield sim
    sim.stop()


def test_the_fleet_page_shows_the_webuis_checkpoint_and_version_on_the_a1111_badge(
        start_worker: Any, pages: Any, webui: A1111SimulatorProcess) -> None:
    # Given the fleet page open, and a worker on a WebUI
    fleet = pages.open("/")
    worker = start_worker("gpu0", CONNECTORS="a1111", A1111_URL=webui.url, HEALTH_INTERVAL="0.5")
    badge = f'[data-worker="{worker.node_name}"] .badge[data-service="a1111"]'
    # Then its badge turns idle and names the loaded checkpoint and the WebUI's version
    fleet.wait_for_selector(badge + '[data-status="idle"] .badge-detail')
    assert fleet.inner_text(badge + " .badge-detail") == "v1-5-pruned-emaonly.safetensors [6ce0161689] · v1.10.1"
    # When another checkpoint is loaded through the WebUI's options, the badge follows
    requests.post(f"{webui.url}/sdapi/v1/options", json={"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"},
                  timeout=10).raise_for_status()
    fleet.wait_for_function("(sel) => document.querySelector(sel).textContent.startsWith('sd_xl_base_1.0')",
                            arg=badge + " .badge-detail")
    assert not pages.errors


def test_a_running_a1111_jobs_live_preview_shows_on_its_job_page(start_worker: Any, pages: Any, live_monitor: Any,
                                                                 webui: A1111SimulatorProcess) -> None:
    # Given a worker on a WebUI that renders a live preview every 10 steps
    start_worker("gpu0", CONNECTORS="a1111", A1111_URL=webui.url)
    # When a 150-step job runs and its page is open
    response = live_monitor.post("/api/jobs", {"service": "a1111", "payload": {"prompt": "preview", "steps": 150,
                                                                               "width": 256, "height": 256}})
    assert response.status_code == 201, response.text
    [job_id] = [job["id"] for job in response.json()["jobs"]]
    page = pages.open(f"/jobs/{job_id}")
    page.wait_for_selector('#job-status [data-status="processing"]')
    # Then the page shows the preview image while the job runs, served by the monitor as a PNG
    page.wait_for_function("""() => { const img = document.querySelector('#job-preview img');
        return img && img.complete && img.naturalWidth > 0; }""", timeout=30_000)
    image = requests.get(f"{live_monitor.url}/api/jobs/{job_id}/preview", timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"].startswith("image/png")
    assert image.content.startswith(b"\x89PNG")
    assert live_monitor.get(f"/api/jobs/{job_id}")["status"] == "processing"
