"""The dashboard under a path prefix behind a reverse proxy, in real headless Chromium.

``jobqueue monitor --broker URL --url-prefix /flower`` watches a plain Celery app's worker; a
tiny reverse proxy (tests/monitor/reverse_proxy.py) serves it at ``/ops/flower/`` by stripping
``/ops`` and saying so in ``X-Forwarded-Prefix`` (believed: ``JOBQUEUE_MONITOR_PROXY_COUNT=1``).
Every page loads its assets, the fleet goes live over the websocket, a job page opens, a control
works, and the browser asks for nothing outside ``/ops/flower/``: every request is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import chromium  # noqa: F401  (fixture)
from tests.monitor.plain_app import flower_like_monitor, plain_worker  # noqa: F401  (fixture)
from tests.monitor.reverse_proxy import ReverseProxy

pytestmark = [pytest.mark.chromium, pytest.mark.slow, pytest.mark.timeout(240)]

TOKEN = "prefix-browser-token"
WORKER = "plain@box-p"
#: Every page of the dashboard (the job page's id is added by the test).
PAGES = ["/", "/?view=table", "/jobs", "/stats", "/client", "/broker", "/admin", f"/workers/{WORKER}"]


@pytest.fixture
def proxied(plain_worker: Any, redis_url: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """The public URL (``http://proxy/ops/flower``) of a monitor started like Flower, behind the proxy."""
    with flower_like_monitor(tmp_path, "--broker", redis_url, "--url-prefix", "/flower",
                             JOBQUEUE_MONITOR_TOKEN=TOKEN, JOBQUEUE_MONITOR_PUBLIC_READ="1",
                             JOBQUEUE_MONITOR_PROXY_COUNT="1") as (url, _):
        root = urlsplit(url)
        proxy = ReverseProxy(f"{root.scheme}://{root.netloc}", "/ops").start()
        try:
            yield proxy.url + "/flower"
        finally:
            proxy.stop()


class Recorder:
    """Every request a page makes (websockets too), every answer of 400 or more, every failed request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.bad: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("request", lambda req: self.requests.append(req.url))
        page.on("websocket", lambda ws: self.requests.append(ws.url))
        # (a load that a navigation cuts short -- the login page leaving as its POST's answer
        # arrives -- is aborted, not refused: it was still asked for under the prefix)
        page.on("requestfailed", lambda req: "ERR_ABORTED" in str(req.failure)
                or self.bad.append(f"failed {req.method} {req.url}: {req.failure}"))
        page.on("response", lambda res: res.status >= 400 and self.bad.append(f"{res.status} {res.url}"))


def test_every_page_asset_api_call_and_the_websocket_stay_under_the_prefix_behind_a_proxy(
        proxied: str, plain_worker: Any, chromium: Any) -> None:  # noqa: F811
    # Given a plain app's task done, and a browser that records every request
    done = plain_worker.send_task("plain.add", args=(20, 22))
    assert done.get(timeout=30) == 42
    recorder = Recorder()
    context = chromium.new_context(viewport=browser.LAPTOP, bypass_csp=True)
    # (in every document, also those whose storage is closed to scripts, such as sandboxed ones)
    store = f"sessionStorage.setItem('jobqueue.monitor.auth', 'Bearer {TOKEN}')"
    context.add_init_script("try { " + store + " } catch (e) {}")
    context.on("page", recorder.attach)
    errors: list[str] = []
    context.on("weberror", lambda err: errors.append(str(err.error)))
    try:
        # When the fleet page opens through the proxy
        fleet = context.new_page()
        fleet.set_default_timeout(30_000)
        fleet.goto(proxied + "/")
        # Then it goes live over the websocket and shows the plain worker
        fleet.wait_for_selector("#conn.conn-live")
        fleet.wait_for_selector(f'[data-worker="{WORKER}"]')
        assert any(url.startswith("ws://") and urlsplit(url).path == "/ops/flower/ws" for url in recorder.requests)
        # When the admin page is asked for without a session
        admin = context.new_page()
        admin.set_default_timeout(30_000)
        admin.goto(proxied + "/admin")
        # Then the login page under the prefix asks for a credential, and logging in there
        # comes back to the admin page with a session cookie scoped to the prefix
        assert urlsplit(admin.url).path == "/ops/flower/login"
        admin.fill("#credential", TOKEN)
        admin.click("#page-login-submit")
        admin.wait_for_url(proxied + "/admin")
        admin.wait_for_selector("#conn.conn-live")
        assert [c["path"] for c in context.cookies() if c["name"] == "jobqueue_session"] == ["/ops/flower"]
        admin.close()
        # When every other page and the task's job page open
        for path in [*PAGES, f"/jobs/{done.id}"]:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(proxied + path)
            page.wait_for_selector("#conn.conn-live")
            page.wait_for_load_state("networkidle")
            # Then every link the page drew points under the prefix
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            assert [link for link in links if not link.startswith("/ops/flower/")] == [], path
            if path.startswith("/jobs/"):
                page.wait_for_selector("#job-status [data-status='completed']")
            page.close()
        # When an operator drains the worker from the fleet page
        fleet.click(f'[data-worker="{WORKER}"] [data-control="drain"]')
        # Then the control goes through and the page shows it live
        fleet.wait_for_selector(f'[data-worker="{WORKER}"].worker-draining')
        fleet.click(f'[data-worker="{WORKER}"] [data-control="resume"]')
        fleet.wait_for_selector(f'[data-worker="{WORKER}"].worker-online')
        # And nothing was asked for outside the prefix, nothing failed, no script broke
        wait_for(lambda: recorder.requests, 5, what="requests recorded")
        outside = [url for url in recorder.requests if not urlsplit(url).path.startswith("/ops/flower/")]
        assert outside == []
        assert recorder.bad == [] and errors == []
        assert len(recorder.requests) > 30
    finally:
        context.close()
