"""The client page for people making images: it opens on a service some online worker serves,
draws the service's payload schema as a form (types, defaults, enums, required fields), and
takes a ComfyUI workflow as a dropped API-format JSON file. Real worker, real monitor process,
real headless Chromium."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import TOKEN, Pages, log_in

chromium = browser.chromium
start_monitor = browser.start_monitor

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

PAYLOAD_JS = "() => JSON.parse(document.getElementById('payload').value)"


def drop_file(page: Any, selector: str, name: str, text: str) -> None:
    """Drop a file on ``selector`` as a user dragging it from their desktop would."""
    page.evaluate("""([selector, name, text]) => {
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: "application/json"}));
        const zone = document.querySelector(selector);
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", [selector, name, text])


def test_the_client_page_opens_on_a_served_service_and_its_form_builds_the_payload(
        app: Any, start_worker: Any, chromium: Any, start_monitor: Any) -> None:
    # Given a monitor and one online worker serving only the simulation service
    monitor = start_monitor()
    start_worker("gpu0")
    wait_for(lambda: any("simulation" in (w.get("connectors") or {}) and w.get("status") != "offline"
                         for w in monitor.get("/api/workers").get("workers", [])), 30, what="the worker online")
    pages = Pages(chromium, monitor.url)
    try:
        page = pages.open("/client")
        log_in(page, TOKEN)
        # Then the page opens on simulation, the services no worker serves marked as such
        page.wait_for_function("() => document.getElementById('service').value === 'simulation'")
        labels = page.evaluate("() => [...document.querySelectorAll('#service option')].map((o) => o.textContent)")
        assert labels[0] == "simulation" and "a1111 (no worker online)" in labels and "comfyui (no worker online)" in labels
        assert "1 online worker serve" in page.inner_text("#service-note")
        # And its schema is a form: typed controls, bounds, defaults
        page.wait_for_selector("#payload-form [data-field='steps']")
        steps = page.locator("#field-steps")
        assert steps.get_attribute("type") == "number" and steps.get_attribute("min") == "0"
        assert steps.get_attribute("max") == "100000" and steps.get_attribute("placeholder") == "default 1"
        assert page.get_attribute("#field-fail_at_step", "data-kind") == "number"
        assert page.get_attribute("#field-files", "data-kind") == "json"
        # When fields are filled in the form
        steps.fill("2")
        steps.dispatch_event("change")
        page.fill("#field-output", json.dumps({"hello": "form"}))
        page.dispatch_event("#field-output", "change")
        page.fill("#field-step_seconds", "")
        page.dispatch_event("#field-step_seconds", "change")
        # Then the payload holds what they say (an emptied field left out: its default applies)
        body = page.evaluate(PAYLOAD_JS)
        assert body["steps"] == 2 and body["output"] == {"hello": "form"} and "step_seconds" not in body
        # And an edit of the JSON shows in the form
        page.fill("#payload", json.dumps({"steps": 3, "output": "x"}))
        page.wait_for_function("() => document.getElementById('field-steps').value === '3'")
        # And the job it submits runs with that payload
        page.click("#submit")
        page.wait_for_selector("#submitted .job-row[data-job-id]")
        job_id = page.get_attribute("#submitted .job-row[data-job-id]", "data-job-id")
        assert app.AsyncResult(job_id).get(timeout=30)["output"] == "x"

        # When a1111 is chosen: its request kinds are an enum, and each kind has its own fields
        page.select_option("#service", "a1111")
        page.wait_for_selector("#field-mode")
        modes = page.evaluate("() => [...document.querySelectorAll('#field-mode option')].map((o) => o.value)")
        assert modes == ["", '"txt2img"', '"img2img"']
        assert page.locator("#field-init_images").count() == 0
        page.select_option("#field-mode", '"img2img"')
        page.wait_for_selector("#field-init_images")
        assert page.evaluate(PAYLOAD_JS)["mode"] == "img2img"
        assert page.get_attribute("#field-restore_faces", "data-kind") == "boolean"

        # When comfyui is chosen: its workflow is required, and a drop zone takes a workflow file
        page.select_option("#service", "comfyui")
        page.wait_for_selector("#workflow-drop:not([hidden])")
        assert "workflow *" in page.inner_text("[data-row='workflow'] label")
        page.fill("#payload", "{}")
        drop_file(page, "#workflow-drop", "ui.json", json.dumps({"nodes": [], "links": []}))
        page.wait_for_function("() => document.getElementById('submit-error').textContent.includes('UI-format')")
        drop_file(page, "#workflow-drop", "my-workflow.json", json.dumps(EXAMPLE_WORKFLOW))
        page.wait_for_function("() => document.getElementById('workflow-info').textContent.includes('my-workflow.json')")
        assert page.evaluate(PAYLOAD_JS) == {"workflow": EXAMPLE_WORKFLOW}
        assert json.loads(page.input_value("#field-workflow")) == EXAMPLE_WORKFLOW
        assert not pages.errors
        browser.screenshot(page, "client-comfyui-form")
    finally:
        pages.close()
