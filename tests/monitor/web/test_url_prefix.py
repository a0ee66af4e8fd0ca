"""The monitor under a path prefix (``JOBQUEUE_MONITOR_URL_PREFIX``) and behind a proxy that
says where it mounted it (``X-Forwarded-Prefix``, believed only with
``JOBQUEUE_MONITOR_PROXY_COUNT``): pages, assets, API, login redirect and cookies all follow.
The browser's side (every request of every page under the prefix, the websocket, a control)
is tests/monitor/web/test_url_prefix_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from monitor.app import create_app
from monitor.web.prefix import normalise_prefix

TOKEN = "prefix-token"


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Any]:
    """Factory: a monitor app on a fresh store with ``overrides`` on top of a token-protected
    configuration (reads need a login too)."""
    apps: list[Any] = []

    def make(**overrides: Any) -> Any:
        settings = Settings(monitor_db=f"sqlite:///{tmp_path / f'app{len(apps)}.db'}", broker_url="redis://127.0.0.1:6379/14",
                            monitor_token=TOKEN, **overrides).resolved()
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["jobqueue_monitor"].close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_every_page_asset_and_api_route_answers_under_the_prefix_and_nothing_outside_it(make_app):
    # Given a monitor served under /flower
    client = make_app(monitor_url_prefix="/flower").test_client()
    # When pages, an asset and API routes are asked for under the prefix
    for path in ("/", "/jobs", "/stats", "/client", "/broker", "/admin"):
        page = client.get("/flower" + path, headers=AUTH)
        # Then each page answers, and its shell names the base path and links under it
        assert page.status_code == 200, path
        html = page.get_data(as_text=True)
        assert '<meta name="jq-base" content="/flower">' in html
        for link in re.findall(r'(?:href|src)="([^"]+)"', html):
            assert link.startswith("/flower/"), (path, link)
    assert client.get("/flower/ui-static/js/common.js").status_code == 200
    assert client.get("/flower/api/workers", headers=AUTH).get_json() == {"workers": []}
    assert client.get("/flower/healthz").status_code == 200
    assert client.get("/flower/api/openapi.json", headers=AUTH).get_json()["servers"] == [{"url": "/flower"}]
    assert client.get("/flower/metrics", headers=AUTH).status_code == 200
    # And the same paths without the prefix are not this monitor's
    for path in ("/", "/api/workers", "/healthz", "/ui-static/js/common.js", "/ws"):
        outside = client.get(path, headers=AUTH)
        assert outside.status_code == 404 and b"served under /flower/" in outside.data, path
    # And the bare prefix goes to its root
    bare = client.get("/flower?view=table")
    assert bare.status_code == 308 and bare.headers["Location"].endswith("/flower/?view=table")


def test_the_login_redirect_and_the_session_cookie_follow_the_prefix(make_app):
    # Given a monitor under /flower where reading needs a login
    client = make_app(monitor_url_prefix="flower/").test_client()
    # When a browser without a session opens a page
    page = client.get("/flower/jobs?state=failed")
    # Then it is sent to the login page under the prefix, coming back to the app's page
    assert page.status_code == 302
    assert page.headers["Location"] == "/flower/login?next=/jobs%3Fstate%3Dfailed"
    login = client.get("/flower/login?next=/jobs")
    assert login.status_code == 200 and '<meta name="jq-base" content="/flower">' in login.get_data(as_text=True)
    # When it logs in
    answer = client.post("/flower/login", json={"credential": TOKEN})
    # Then its session cookie is scoped to the prefix, and opens the pages there
    cookie = answer.headers["Set-Cookie"]
    assert answer.status_code == 200 and "Path=/flower;" in cookie + ";"
    assert client.get("/flower/jobs").status_code == 200
    # And logging out clears that same cookie
    out = client.post("/flower/logout", json={})
    assert "Path=/flower" in out.headers["Set-Cookie"] and "Max-Age=0" in out.headers["Set-Cookie"]


def test_x_forwarded_prefix_counts_only_from_a_trusted_proxy(make_app):
    # Given a monitor at the root that trusts no proxy, and one behind one trusted proxy
    untrusting = make_app().test_client()
    behind = make_app(monitor_proxy_count=1).test_client()
    forwarded = {**AUTH, "X-Forwarded-Prefix": "/ops", "X-Forwarded-For": "203.0.113.9"}
    # When a request says it came through a proxy mounted at /ops
    ignored = untrusting.get("/jobs", headers=forwarded).get_data(as_text=True)
    believed = behind.get("/jobs", headers=forwarded).get_data(as_text=True)
    # Then only the trusting monitor puts its links and scripts' base under /ops
    assert '<meta name="jq-base" content="">' in ignored and 'href="/ops/' not in ignored
    assert '<meta name="jq-base" content="/ops">' in believed and 'src="/ops/ui-static/js/common.js"' in believed
    # And its login redirect goes there too
    assert behind.get("/", headers={"X-Forwarded-Prefix": "/ops"}).headers["Location"] == "/ops/login?next=/"


def test_a_proxy_prefix_and_the_monitors_own_prefix_add_up(make_app):
    # Given a monitor under /flower behind a trusted proxy that strips its own /ops
    client = make_app(monitor_url_prefix="/flower", monitor_proxy_count=1).test_client()
    # When the proxy forwards /ops/flower/jobs as /flower/jobs
    html = client.get("/flower/jobs", headers={**AUTH, "X-Forwarded-Prefix": "/ops"}).get_data(as_text=True)
    # Then the page's base is the whole path the browser sees
    assert '<meta name="jq-base" content="/ops/flower">' in html


@pytest.mark.parametrize("bad", ["/fl ower", "/a//b", "/../x", "/x?y", "/x#y"])
def test_a_prefix_that_is_not_a_path_is_refused_with_its_variable_named(bad):
    with pytest.raises(ConfigError, match="JOBQUEUE_MONITOR_URL_PREFIX"):
        normalise_prefix(bad)


def test_a_prefix_is_written_one_way_whatever_its_slashes():
    assert [normalise_prefix(p) for p in ("", "/", "flower", "/flower/", " /a/b/ ")] == ["", "", "/flower", "/flower", "/a/b"]


def test_a_negative_proxy_count_or_hide_setting_is_refused(make_app):
    with pytest.raises(ConfigError, match="JOBQUEUE_MONITOR_PROXY_COUNT"):
        make_app(monitor_proxy_count=-1)
    with pytest.raises(ConfigError, match="JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER"):
        make_app(monitor_hide_offline_after=-5)
