"""The client page in a real headless Chromium checks a payload against its service's schema
(GET /api/services/<name>/schema) before sending anything."""

from __future__ import annotations

import json

import pytest

from tests.monitor import browser
from tests.monitor.browser import TOKEN, log_in

chromium = browser.chromium
start_monitor = browser.start_monitor
live_monitor = browser.live_monitor
pages = browser.pages

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_client_page_shows_the_fields_and_refuses_a_bad_payload_before_sending(pages):
    # Given the client page, logged in, on the simulation service
    client = pages.open("/client")
    log_in(client, TOKEN)
    client.wait_for_function("document.body.classList.contains('can-control')")
    client.select_option("#service", "simulation")
    # Then its form lists the payload's fields with their types, from the schema
    client.wait_for_selector("#payload-form [data-row='steps']")
    assert "steps integer 0..100000" in client.text_content("[data-row='steps'] label")
    assert "step_seconds number 0..3600" in client.text_content("[data-row='step_seconds'] label")
    # When a payload with a wrong type and an unknown field is submitted
    posts: list[str] = []
    client.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    client.fill("#payload", json.dumps({"steps": "five", "colour": "red"}))
    client.click("#submit")
    # Then the page names both problems and sends nothing
    client.wait_for_function("document.getElementById('submit-error').textContent !== ''")
    message = client.inner_text("#submit-error")
    assert "unknown field(s) colour" in message
    assert "'steps' must be integer 0..100000" in message
    assert posts == []
    assert pages.errors == [] and pages.dialogs == []
