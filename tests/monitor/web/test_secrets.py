"""Secrets stay secret (issue 24, point 9): values under secret-looking keys are "•••" in the
monitor's API and pages, in Celery events and in worker logs, while the worker gets them whole.

Through the real path: a real worker process runs the job, a real monitor process collects the
events, Celery's own EventReceiver records the event stream, headless Chromium opens the job
page.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from jobqueue import submit_job
from jobqueue.shared.masking import MASK, mask, mask_event, mask_text
from jobqueue.shared.summary import summarize_payload
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import Pages

chromium = browser.chromium

API_KEY = "sk-123-live-0f9e8d"
PASSWORD = "hunter2-nested-77"
SECRETS = (API_KEY, PASSWORD)


class EventRecorder:
    """Celery's own EventReceiver on the job's broker, keeping every event as JSON text."""

    def __init__(self, app: Any) -> None:
        self.events: list[str] = []
        self.ready = threading.Event()
        self._conn = app.connection_for_read()
        receiver = app.events.Receiver(self._conn, handlers={"*": lambda ev: self.events.append(
            json.dumps(ev, default=str, ensure_ascii=False))})
        receiver.on_consume_ready = lambda *a, **k: self.ready.set()
        self._receiver = receiver
        self.thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._receiver.should_stop = True
        self.thread.join(10)
        self._conn.release()


# -- the masking rules ---------------------------------------------------------------------------
def test_values_under_secret_keys_are_masked_at_any_depth_and_nothing_else_is() -> None:
    payload = {"api_key": API_KEY, "nested": {"Password": PASSWORD, "steps": 3},
               "list": [{"X-Auth-Token": "t"}], "prompt": "a secret garden", "none_token": None}
    assert mask(payload) == {"api_key": MASK, "nested": {"Password": MASK, "steps": 3},
                             "list": [{"X-Auth-Token": MASK}], "prompt": "a secret garden", "none_token": None}
    assert payload["api_key"] == API_KEY  # the original is untouched
    assert mask({"cookie": "c", "user": "u"}, "user") == {"cookie": "c", "user": MASK}


def test_text_that_spells_structure_is_masked_json_reprs_pairs_and_url_queries() -> None:
    assert json.loads(mask_text(json.dumps({"a": {"token": "x"}}))) == {"a": {"token": MASK}}
    assert mask_text(repr({"output": {"api_key": API_KEY}, "n": 1})) == repr({"output": {"api_key": MASK}, "n": 1})
    # a repr Celery shortened ({...} deeper than 3 levels) is masked by its pairs
    assert mask_text("{'a': {'api_key': 'sk', 'b': {...}}}") == "{'a': {'api_key': '•••', 'b': {...}}}"
    assert mask_text("steps=1 api_key='sk' password=p") == "steps=1 api_key='•••' password=•••"
    assert mask_text("https://h.example/hook?x=1&token=abc&y=2") == "https://h.example/hook?x=1&token=•••&y=2"
    assert mask_text("ExecutionFailed('bad', {'secret': 's'})") == "ExecutionFailed('bad', {'secret': '•••'})"
    assert mask_text("a prompt about a secret garden") == "a prompt about a secret garden"


def test_an_events_ids_stay_whatever_the_pattern_and_its_values_are_masked() -> None:
    event = {"type": "job-truth", "uuid": "u-token", "fields": {"result": {"token": "t"}, "status": "completed"},
             "kwargs": '{"payload_summary": "password=\'p\'"}'}
    assert mask_event(event, "token|password|status") == {
        "type": "job-truth", "uuid": "u-token", "fields": {"result": {"token": MASK}, "status": "completed"},
        "kwargs": '{"payload_summary": "password=\'•••\'"}'}


def test_an_event_with_nothing_to_mask_is_passed_on_uncopied_and_a_masked_one_leaves_the_original_alone() -> None:
    # Given a progress event naming no secret, and one whose message spells one
    plain = {"type": "task-progress", "uuid": "u1", "message": "step 1/10", "percent": 10.0, "hostname": "w"}
    secret = {**plain, "message": "token=abc"}
    # Then the first is the very same object (no copy per event on the writer's hot path)
    assert mask_event(plain) is plain
    # And the second is a masked copy, the event itself unchanged
    masked = mask_event(secret)
    assert masked is not secret and masked["message"] == f"token={MASK}" and secret["message"] == "token=abc"


def test_the_worker_log_filter_masks_arguments_messages_and_tracebacks() -> None:
    import io
    import logging

    from jobqueue.worker.masked import MaskingLogFilter

    stream = io.StringIO()
    logger = logging.getLogger("tests.secrets.masking")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.addFilter(MaskingLogFilter())
    try:
        logger.error("Task %(name)s succeeded: %(return_value)s",
                     {"name": "t", "return_value": repr({"api_key": API_KEY})})
        try:
            raise ValueError(f"bad request {{'password': '{PASSWORD}'}}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "succeeded: {'api_key': '•••'}" in text and "{'password': '•••'}" in text
    assert not [s for s in SECRETS if s in text]


def test_hostile_nesting_is_masked_without_exhausting_the_stack() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    inner.append({"token": "deep-secret"})
    assert "deep-secret" not in repr(mask_event({"type": "task-succeeded", "result": deep}))
    text = '{"a":' * 3000 + '{"token": "deep-secret"}' + "}" * 3000
    assert "deep-secret" not in mask_text(text) and MASK in mask_text(text)


def test_the_payload_summary_shows_no_secret() -> None:
    summary = summarize_payload("simulation", {"steps": 1, "output": {"api_key": API_KEY}})
    assert summary is not None and API_KEY not in summary and MASK in summary


# -- the real path ---------------------------------------------------------------------------------
@pytest.mark.chromium
@pytest.mark.timeout(240)
def test_a_secret_in_a_payload_reaches_the_worker_but_no_event_log_api_or_page(
        app: Any, start_worker: Any, start_monitor: Any, chromium: Any) -> None:
    # Given a monitor collecting events, a recorder on the raw event stream, and a worker
    monitor = start_monitor("secrets.db")
    recorder = EventRecorder(app)
    try:
        assert recorder.ready.wait(10), "the event recorder did not subscribe"
        worker = start_worker("gpu0")
        # When a job whose payload holds secrets runs (the simulation echoes "output" as its result)
        secret_output = {"api_key": API_KEY, "nested": {"Password": PASSWORD}, "note": "visible"}
        handle = submit_job("simulation", {"steps": 1, "step_seconds": 0.0, "output": secret_output}, app=app)
        result = handle.wait(timeout=60)
        # Then the job got (and returned) the real values
        assert result["output"] == secret_output
        # And the monitor's API shows them masked, in the list and in the job with its timeline
        job = wait_for(lambda: (j := monitor.get(f"/api/jobs/{handle.id}").json()).get("status") == "completed"
                       and j.get("result") and j, 30, what="the job completed in the monitor")
        assert job["result"]["output"] == {"api_key": MASK, "nested": {"Password": MASK}, "note": "visible"}
        listed = monitor.get("/api/jobs").text
        assert handle.id in listed
        detail = monitor.get(f"/api/jobs/{handle.id}").text
        for text in (listed, detail):
            assert not [s for s in SECRETS if s in text], text
        # And the job page, drawn in Chromium, shows the result without the secrets
        pages = Pages(chromium, monitor.url)
        try:
            page = pages.open(f"/jobs/{handle.id}")
            page.wait_for_function("() => (document.querySelector('pre.result') || {}).textContent"
                                   " && document.querySelector('pre.result').textContent.includes('visible')")
            html = page.content()
            assert MASK in html and not [s for s in SECRETS if s in html]
            assert not pages.errors
        finally:
            pages.close()
        # And the event stream carried the job's events, none with a secret
        wait_for(lambda: any('"task-succeeded"' in ev and handle.id in ev for ev in recorder.events), 30,
                 what="the task-succeeded event")
        mine = [ev for ev in recorder.events if handle.id in ev]
        assert {"task-sent", "task-received", "task-succeeded"} <= {json.loads(ev)["type"] for ev in mine}
        assert not [ev for ev in recorder.events if any(s in ev for s in SECRETS)]
        # And the worker's log says the task succeeded, without the secrets
        log_text = wait_for(lambda: (t := worker.log_path.read_text()) and handle.id in t and "succeeded" in t and t,
                            10, what="the worker's success line")
        assert MASK in log_text and not [s for s in SECRETS if s in log_text]
    finally:
        recorder.stop()


def test_a_monitor_started_after_the_job_ended_rebuilds_it_from_the_backend_with_secrets_masked(
        app: Any, start_worker: Any, start_monitor: Any) -> None:
    # Given a job with secrets that ended before any monitor ran
    start_worker("gpu0")
    secret_output = {"api_key": API_KEY, "nested": {"Password": PASSWORD}}
    handle = submit_job("simulation", {"steps": 1, "output": secret_output}, app=app)
    assert handle.wait(timeout=60)["output"] == secret_output
    # When a monitor starts and its truth repair rebuilds the job from the result backend
    monitor = start_monitor("late.db")
    job = wait_for(lambda: (j := monitor.get(f"/api/jobs/{handle.id}").json()).get("status") == "completed"
                   and j.get("result") and j, 60, what="the job rebuilt by repair")
    # Then its result, metadata and timeline are masked
    assert job["result"]["output"] == {"api_key": MASK, "nested": {"Password": MASK}}
    for path in ("/api/jobs", f"/api/jobs/{handle.id}"):
        text = monitor.get(path).text
        assert handle.id in text and not [s for s in SECRETS if s in text], text
