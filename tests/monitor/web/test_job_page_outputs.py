"""The job page leads with its outputs: a real worker's simulated job makes an image, a video
(with a poster) and an audio track; the page shows them in a gallery above the folded result
JSON, its progress events fold into one timeline row, and Chromium seeks in the served video
with a Range request. Real worker, real monitor process, real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from jobqueue.sims.comfyui.process import SimulatorProcess
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import TOKEN, Pages

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

FILES = [{"kind": "image", "mb": 0.01, "name": "still.png"}, {"kind": "video", "mb": 0.5, "name": "clip.mp4"},
         {"kind": "audio", "mb": 0.1, "name": "tone.wav"}, {"kind": "model", "mb": 0.01, "name": "mesh.glb"}]
SEEK_TO = 2.5


def test_the_job_page_shows_image_video_and_audio_first_and_the_browser_seeks_the_video_by_range(
        app: Any, start_worker: Any, chromium: Any, start_monitor: Any) -> None:
    # Given a monitor sharing the worker's disk, and a completed job with four kinds of output
    monitor = start_monitor()
    start_worker("gpu0")
    handle = submit_job("simulation", {"steps": 3, "step_seconds": 0.6, "files": FILES}, app=app)
    handle.wait(timeout=60)
    wait_for(lambda: (monitor.job(handle.id).get("result") or {}).get("files"), 30,
             what="the monitor to hold the job's result")
    pages = Pages(chromium, monitor.url)
    ranges: list[str] = []
    partial: list[int] = []
    try:
        page = pages.open("/jobs", token=TOKEN)
        page.on("request", lambda r: ranges.append(r.headers.get("range", "")) if r.url.endswith("/clip.mp4") else None)
        page.on("response", lambda r: partial.append(r.status) if r.url.endswith("/clip.mp4") else None)
        page.goto(f"{monitor.url}/jobs/{handle.id}")
        # When the page draws: the gallery comes first, before the job's fields and its result
        page.wait_for_selector("#job-outputs video.output-media")
        order = page.evaluate("() => [...document.querySelectorAll('#job > *')].map((e) => e.id).filter(Boolean)")
        assert order.index("job-outputs") < order.index("job-detail")
        kinds = page.evaluate("() => [...document.querySelectorAll('#job-outputs [data-kind]')].map((e) => e.dataset.kind)")
        assert kinds == ["image", "video", "audio", "file"]  # the poster is the video's, not a fifth item
        # Then the image is shown, the audio and the video load, the video with its poster
        page.wait_for_function("() => document.querySelector('#job-outputs img').naturalWidth > 0")
        page.wait_for_function("() => document.querySelector('#job-outputs audio').duration > 0")
        page.wait_for_function("() => document.querySelector('#job-outputs video').readyState >= 1")
        assert page.get_attribute("#job-outputs video", "poster") == f"/jobs/{handle.id}/files/clip.poster.png"
        assert page.evaluate("() => document.querySelector('#job-outputs video').duration") == pytest.approx(4.0, abs=0.3)
        assert page.get_attribute('#job-outputs [data-kind="file"] a', "href") == f"/jobs/{handle.id}/files/mesh.glb"
        # When the video is seeked
        page.evaluate(f"() => {{ const v = document.querySelector('#job-outputs video'); v.currentTime = {SEEK_TO}; }}")
        # Then it reaches that time, and the server was asked for ranges (and answered 206)
        page.wait_for_function(f"() => {{ const v = document.querySelector('#job-outputs video');"
                               f" return !v.seeking && Math.abs(v.currentTime - {SEEK_TO}) < 0.01 && v.readyState >= 2; }}")
        assert any(r.startswith("bytes=") for r in ranges), ranges
        assert 206 in partial, partial
        # And the result JSON and payload are folded, the progress events one row
        assert page.evaluate("() => document.querySelector('#job-result').open") is False
        assert "clip.mp4" in page.text_content("#job-result pre.result")
        rows = page.evaluate("() => [...document.querySelectorAll('#timeline > li')].map((e) => e.dataset.type)")
        assert rows.count("task-progress") == 1 and "task-succeeded" in rows
        progress = [e for e in monitor.get(f"/api/jobs/{handle.id}")["events"] if e["type"] == "task-progress"]
        assert len(progress) >= 2 and int(page.get_attribute(".event-progress-group", "data-count")) == len(progress)
        # (the writer may fold the step-0 report into the next one, so the first step is the stored one)
        first_step = min(e["fields"]["step"] for e in progress)
        assert first_step in (0, 1)
        assert f"{len(progress)} progress events · step {first_step} → 3/3" in page.inner_text(".event-progress-group summary")
        # And a completed job offers a re-run, which submits it again
        page.click("#job-actions button:has-text('re-run')")
        page.wait_for_function("() => document.querySelector('#notice').textContent.startsWith('re-run as ')")
        again = page.inner_text("#notice").removeprefix("re-run as ").strip()
        kwargs = wait_for(lambda: app.AsyncResult(again).kwargs, 30, what="the re-run job's kwargs")
        assert kwargs["payload"]["files"] == FILES
        assert not pages.errors
        browser.screenshot(page, "job-page-outputs")
    finally:
        pages.close()


def test_a_comfyui_jobs_page_shows_its_image_and_downloads_its_workflow_as_api_json(
        app: Any, start_worker: Any, chromium: Any, start_monitor: Any, tmp_path: Path) -> None:
    # Given a ComfyUI (the simulator) and its worker, and a monitor sharing the worker's disk
    sim = SimulatorProcess(output_dir=tmp_path / "sim-out", log_path=tmp_path / "sim.log").start()
    try:
        monitor = start_monitor()
        start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url)
        # When a ComfyUI job has run
        handle = submit_job("comfyui", {"workflow": EXAMPLE_WORKFLOW}, app=app)
        [entry] = handle.wait(timeout=60)["files"]
        wait_for(lambda: (monitor.job(handle.id).get("result") or {}).get("files"), 30,
                 what="the monitor to hold the job's result")
        pages = Pages(chromium, monitor.url)
        try:
            page = pages.open(f"/jobs/{handle.id}")
            # Then its image leads the page
            page.wait_for_function("() => (document.querySelector('#job-outputs img') || {}).naturalWidth > 0")
            assert page.get_attribute("#job-outputs img", "alt") == entry["name"]
            # And its workflow downloads as the API-format JSON it was submitted as
            with page.expect_download() as download:
                page.click("#job-actions button:has-text('workflow (API JSON)')")
            saved = download.value
            assert saved.suggested_filename == f"workflow-{handle.id}.json"
            assert json.loads(Path(saved.path()).read_text()) == EXAMPLE_WORKFLOW
            # And so it does under the pages' real CSP
            strict = pages.open(f"/jobs/{handle.id}", enforce_csp=True)
            strict.wait_for_selector("#job-actions button")
            with strict.expect_download() as again:
                strict.click("#job-actions button:has-text('workflow (API JSON)')")
            assert json.loads(Path(again.value.path()).read_text()) == EXAMPLE_WORKFLOW
            assert not pages.errors
        finally:
            pages.close()
    finally:
        sim.stop()
