"""Real headless Chromium and a real monitor process for the dashboard tests.

Chromium is Debian's ``/usr/bin/chromium`` (``JOBQUEUE_TEST_CHROMIUM`` overrides), driven by
Playwright's Python API; ``playwright install`` is never needed. A missing Chromium *fails* the
tests: a dashboard nobody could open in a browser is not tested.

The monitor runs as its own process (``monitor.server.serve``) on a free port, on the test's
Redis database and a temporary SQLite store, exactly as a user runs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobqueue.config import Settings
from jobqueue.up.embedded import free_port
from jobqueue.up.procs import ChildProcess
from tests.conftest import settings_env
from tests.helpers import ROOT, child_env, wait_for

#: The browser binary: Debian's chromium package.
CHROMIUM = os.environ.get("JOBQUEUE_TEST_CHROMIUM", "/usr/bin/chromium")
#: Flags for a headless Chromium running as root on a machine with no GPU and no internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
#: Where screenshots go (gitignored); a few are copied to docs/screenshots by hand.
ARTIFACTS = ROOT / "test-artifacts"
#: The bearer token the test monitor accepts.
TOKEN = "dashboard-test-token"
#: A laptop screen and a phone screen.
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


class MonitorProcess(ChildProcess):
    """A ``monitor.server.serve`` subprocess on a free port."""

    #: Runs the monitor's server in-process, with the settings of the environment.
    CODE = (
        "import sys\n"
        "from jobqueue.config import Settings\n"
        "from monitor.server import serve\n"
        "serve(Settings.from_env(), '127.0.0.1', int(sys.argv[1]))\n"
    )

    def __init__(self, settings: Settings, log_path: Path, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        super().__init__([sys.executable, "-c", self.CODE, str(self.port)], None, log_path, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, **env: str) -> MonitorProcess:
        variables = settings_env(self.settings)
        variables.update(env)
        self.env = child_env(variables)
        super().start()
        wait_for(self._healthy, 30, interval=0.1, what=f"monitor on {self.url}/healthz")
        return self

    def _healthy(self) -> bool:
        code = self.exited_with()
        if code is not None:
            raise AssertionError(f"monitor exited with {code}: {self.log_text()[-3000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def post(self, path: str, body: Any = None, token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(self.url + path, json={} if body is None else body, headers=headers, timeout=10)

    def get(self, path: str) -> Any:
        res = requests.get(self.url + path, timeout=10)
        res.raise_for_status()
        return res.json()

    def job(self, job_id: str) -> dict[str, Any]:
        """The monitor's record of a job; empty while it knows no such job (its events may
        still be on their way when the job's result is already in the client's hand)."""
        res = requests.get(f"{self.url}/api/jobs/{job_id}", timeout=10)
        if res.status_code == 404:
            return {}
        res.raise_for_status()
        return dict(res.json())


#: The session's one browser, shared by every test module that registers :func:`chromium`
#: (each registration is its own session fixture; Playwright's sync API allows one at a time).
_SESSION: dict[str, Any] = {}


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session (each test gets fresh contexts)."""
    if "browser" in _SESSION:
        yield _SESSION["browser"]
        return
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: apt-get install chromium (the CI image has it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        _SESSION["browser"] = browser
        try:
            yield browser
        finally:
            _SESSION.clear()
            browser.close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Callable[[], Any]]:
    """Factory of pages, each in a fresh browser context (own cookies), CSP enforced."""
    contexts: list[Any] = []

    def new() -> Any:
        context = chromium.new_context(viewport=LAPTOP)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return page

    yield new
    for context in contexts:
        context.close()


@pytest.fixture
def start_monitor(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., MonitorProcess]]:
    """Factory: ``start_monitor(**env)`` runs a monitor process; all are stopped at the end."""
    monitors: list[MonitorProcess] = []

    def start(**env: str) -> MonitorProcess:
        # Reads open to all (the dashboard tests look at pages), controls behind the token;
        # tests/monitor/web/test_login_page.py covers the login itself.
        variables = {"JOBQUEUE_MONITOR_TOKEN": TOKEN, "JOBQUEUE_MONITOR_PUBLIC_READ": "true"}
        variables.update(env)
        monitor = MonitorProcess(settings, tmp_path / f"monitor-{len(monitors)}.log")
        monitors.append(monitor)
        return monitor.start(**variables)

    yield start
    for monitor in monitors:
        monitor.stop()


@pytest.fixture
def live_monitor(start_monitor: Callable[..., MonitorProcess]) -> MonitorProcess:
    """A monitor process with controls unlocked by :data:`TOKEN`."""
    return start_monitor()


class Pages:
    """Opens dashboard pages; records every dialog and page error so a test can assert none."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[Any] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    def open(self, path: str, viewport: dict[str, int] | None = None, token: str | None = None,
             enforce_csp: bool = False) -> Any:
        """A new page (its own browser context: its own sessionStorage) at ``path``, live.

        The monitor's CSP forbids eval, which Playwright's string predicates use; tests of the
        CSP itself (tests/monitor/web/test_hostile.py) pass ``enforce_csp=True``."""
        context = self.browser.new_context(viewport=viewport or LAPTOP, bypass_csp=not enforce_csp)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        if token:
            page.add_init_script(f"sessionStorage.setItem('jobqueue.monitor.auth', 'Bearer {token}')")
        page.goto(self.base_url + path)
        page.wait_for_selector("#conn.conn-live")
        # A marker that survives only as long as the document: a reload would erase it.
        page.evaluate("window.__openedOnce = true")
        return page

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(chromium: Any, live_monitor: MonitorProcess) -> Iterator[Pages]:
    opened = Pages(chromium, live_monitor.url)
    yield opened
    opened.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Any, secret: str) -> None:
    """Log in through the page's own login form."""
    page.click("#login-open")
    page.fill("#login-token", secret)
    page.click("#login-form button[type=submit]")
