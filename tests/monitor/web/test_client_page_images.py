"""The client page takes a ComfyUI job's input image as a dropped file: it becomes the payload's
``images`` entry of the LoadImage node's name, and the job it submits comes back inverted.
Real worker on a simulated ComfyUI process, real monitor process, real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers import wait_for
from tests.jobqueue.comfyui_fixtures import sim_process
from tests.monitor import browser
from tests.monitor.browser import TOKEN, Pages, log_in

chromium = browser.chromium
start_monitor = browser.start_monitor
__all__ = ["sim_process"]  # a fixture

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

PAYLOAD_JS = "() => JSON.parse(document.getElementById('payload').value)"
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png", "upload": "image"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dropped"}},
}


def drop_bytes(page: Any, selector: str, name: str, data: bytes, kind: str) -> None:
    """Drop a file on ``selector`` as a user dragging it from their desktop would."""
    page.evaluate("""([selector, name, b64, kind]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: kind}));
        const zone = document.querySelector(selector);
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", [selector, name, base64.b64encode(data).decode(), kind])


def test_a_dropped_image_becomes_the_load_image_input_and_the_job_comes_back_inverted(
        app: Any, start_worker: Any, chromium: Any, start_monitor: Any, sim_process: Any) -> None:
    # Given a monitor and a worker serving comfyui on a simulated ComfyUI
    sim = sim_process()
    monitor = start_monitor()
    start_worker("gpu0", CONNECTORS="comfyui", COMFYUI_URL=sim.url)
    wait_for(lambda: any("comfyui" in (w.get("connectors") or {}) and w.get("status") != "offline"
                         for w in monitor.get("/api/workers").get("workers", [])), 30, what="the worker online")
    image = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(image, format="PNG")
    pages = Pages(chromium, monitor.url)
    try:
        page = pages.open("/client")
        log_in(page, TOKEN)
        page.wait_for_function("() => document.getElementById('service').value === 'comfyui'")
        page.wait_for_selector("#workflow-drop:not([hidden])")
        page.fill("#payload", "{}")
        # When an image is dropped before any workflow: it is refused with what to do
        drop_bytes(page, "#workflow-drop", "cat.png", image.getvalue(), "image/png")
        page.wait_for_function("() => document.getElementById('submit-error').textContent.includes('LoadImage node first')")
        # When the workflow, then the image, are dropped
        drop_bytes(page, "#workflow-drop", "invert.json", json.dumps(WORKFLOW).encode(), "application/json")
        page.wait_for_function("() => document.getElementById('workflow-info').textContent.includes('invert.json')")
        drop_bytes(page, "#workflow-drop", "cat.png", image.getvalue(), "image/png")
        page.wait_for_function("() => document.getElementById('image-info').textContent.includes('photo.png ← cat.png')")
        # Then the payload's images holds it as a data URL under the LoadImage node's name
        body = page.evaluate(PAYLOAD_JS)
        assert body["workflow"] == WORKFLOW and list(body["images"]) == ["photo.png"]
        assert base64.b64decode(body["images"]["photo.png"].split(",", 1)[1]) == image.getvalue()
        # And a second image has nowhere to go: the page says so
        drop_bytes(page, "#workflow-drop", "dog.png", image.getvalue(), "image/png")
        page.wait_for_function("() => document.getElementById('submit-error').textContent.includes('has its image already')")
        # When the job is submitted, it runs and its output is the dropped image inverted
        page.click("#submit")
        page.wait_for_selector("#submitted .job-row[data-job-id]")
        job_id = page.get_attribute("#submitted .job-row[data-job-id]", "data-job-id")
        result = app.AsyncResult(job_id).get(timeout=60)
        with Image.open(Path(result["files"][0]["path"])) as out:
            assert out.convert("RGB").getpixel((0, 0)) == (245, 235, 225)
        assert not pages.errors
        browser.screenshot(page, "client-comfyui-image-drop")
    finally:
        pages.close()
