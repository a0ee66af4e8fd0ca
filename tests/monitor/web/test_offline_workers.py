"""Workers offline for longer than ``JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER`` leave ``GET
/api/workers`` (``?status=all`` lists them) while the snapshot keeps every worker; the fleet
page applies the same rule in Chromium, the same for a page open all along and one opened late."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobqueue.config import Settings
from monitor.app import create_app
from monitor.merge.apply import apply
from monitor.store import Store
from monitor.web.offline import is_hidden
from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.browser import chromium, start_monitor  # noqa: F401  (fixtures)

DAY = 86400.0


def worker_events(name: str, online_at: float, offline_at: float | None) -> list[dict[str, Any]]:
    """A worker that came online at ``online_at`` and, when ``offline_at`` is given, went
    offline then (its offline event's time is its last sign of life)."""
    machine, gpu = name.split("@")[1], int(name[3])
    events: list[dict[str, Any]] = [
        {"type": "worker-online", "hostname": name, "timestamp": online_at, "freq": 2.0},
        {"type": "connector-status", "worker": name, "machine_id": machine, "gpu": gpu, "service": "simulation",
         "status": "idle", "timestamp": online_at, "queues": [f"gpu{gpu}"]},
    ]
    if offline_at is not None:
        events.append({"type": "worker-offline", "hostname": name, "timestamp": offline_at})
    return events


def fleet_of_four(store: Store, now: float) -> None:
    """gpu0 online, gpu1 offline for a minute, gpu2 offline for two days (on its own machine),
    gpu3 offline for two days beside online gpu0."""
    with store.write() as tx:
        for name, online_at, offline_at in (("gpu0@live", now - 5, None), ("gpu1@live", now - 120, now - 60),
                                            ("gpu2@gone", now - 3 * DAY, now - 2 * DAY),
                                            ("gpu3@live", now - 3 * DAY, now - 2 * DAY)):
            for event in worker_events(name, online_at, offline_at):
                apply(event, tx)


@pytest.fixture
def fleet_app(tmp_path) -> Iterator[Any]:
    def make(**overrides: Any) -> Any:
        settings = Settings(monitor_db=f"sqlite:///{tmp_path / 'app.db'}", broker_url="redis://127.0.0.1:6379/14",
                            monitor_public_read=True, monitor_token="t", **overrides).resolved()
        app = create_app(settings)
        fleet_of_four(app.extensions["jobqueue_monitor"].store, time.time())
        made.append(app)
        return app

    made: list[Any] = []
    yield make
    for app in made:
        app.extensions["jobqueue_monitor"].close()


def names(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return sorted(w["name"] for w in response.get_json()["workers"])


def test_workers_offline_for_longer_than_the_setting_are_left_out_unless_status_all(fleet_app):
    # Given a fleet with two workers offline for two days, one for a minute, one online
    client = fleet_app().test_client()
    # When the workers are listed
    # Then the long-offline ones are left out by default (one day), listed with status=all
    assert names(client.get("/api/workers")) == ["gpu0@live", "gpu1@live"]
    assert names(client.get("/api/workers?status=all")) == ["gpu0@live", "gpu1@live", "gpu2@gone", "gpu3@live"]
    # And a status lists every worker in it, hidden or not
    assert names(client.get("/api/workers?status=offline")) == ["gpu1@live", "gpu2@gone", "gpu3@live"]
    assert names(client.get("/api/workers?status=online")) == ["gpu0@live"]
    # And the snapshot the websocket starts from still carries every worker
    assert len(client.get("/api/state").get_json()["workers"]) == 4
    # And a hidden worker is still found by name
    assert client.get("/api/workers/gpu2@gone").get_json()["status"] == "offline"


def test_an_unknown_status_is_refused_and_the_setting_0_hides_nobody(fleet_app):
    assert fleet_app().test_client().get("/api/workers?status=dead").status_code == 400
    assert len(names(fleet_app(monitor_hide_offline_after=0).test_client().get("/api/workers"))) == 4


def test_a_worker_that_comes_back_is_listed_again(fleet_app):
    # Given a hidden worker
    app = fleet_app()
    client = app.test_client()
    assert "gpu2@gone" not in names(client.get("/api/workers"))
    # When it comes back online
    with app.extensions["jobqueue_monitor"].store.write() as tx:
        apply({"type": "worker-online", "hostname": "gpu2@gone", "timestamp": time.time(), "freq": 2.0}, tx)
    # Then it is listed again
    assert "gpu2@gone" in names(client.get("/api/workers"))


def test_the_rule_counts_from_the_last_sign_of_life_and_hides_an_offline_worker_never_heard_of():
    now = 1_000_000.0
    assert is_hidden({"status": "offline", "heartbeat_at": now - 11}, now, 10)
    assert not is_hidden({"status": "offline", "heartbeat_at": now - 9}, now, 10)
    assert is_hidden({"status": "offline", "heartbeat_at": None}, now, 10)
    assert not is_hidden({"status": "online", "heartbeat_at": now - 99}, now, 10)
    assert not is_hidden({"status": "draining", "heartbeat_at": None}, now, 10)
    assert not is_hidden({"status": "offline", "heartbeat_at": None}, now, 0)


def shown_workers(page: Any) -> list[str]:
    return sorted(page.eval_on_selector_all("[data-worker]", "els => els.map(e => e.dataset.worker)"))


def machines_shown(page: Any) -> list[str]:
    return sorted(page.eval_on_selector_all("[data-machine]", "els => els.map(e => e.dataset.machine)"))


@pytest.mark.chromium
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_offline_past_the_setting_leaves_the_fleet_page_open_all_along_and_a_late_one_alike(
        app, chromium, start_monitor):  # noqa: F811
    # Given a monitor that hides workers offline for more than 4 s, and two workers on the real
    # event stream, each on its own machine
    monitor = start_monitor(JOBQUEUE_MONITOR_HIDE_OFFLINE_AFTER="4")
    for name in ("gpu0@stays", "gpu1@leaves"):
        with app.events.default_dispatcher(hostname=name) as dispatcher:
            dispatcher.send("worker-online", freq=60.0)
            dispatcher.send("connector-status", worker=name, machine_id=name.split("@")[1], gpu=int(name[3]),
                            service="simulation", status="idle", queues=[f"gpu{name[3]}"])
    pages = browser.Pages(chromium, monitor.url)
    try:
        early = pages.open("/?view=cards")
        wait_for(lambda: shown_workers(early) == ["gpu0@stays", "gpu1@leaves"], 20, what="both workers shown")
        assert machines_shown(early) == ["leaves", "stays"]
        # When one of them goes offline
        with app.events.default_dispatcher(hostname="gpu1@leaves") as dispatcher:
            dispatcher.send("worker-offline")
        early.wait_for_selector('[data-worker="gpu1@leaves"].worker-offline')
        # Then, once it has been offline for longer than the setting, the page open all along
        # drops it and its machine (no event says so: time does)
        wait_for(lambda: shown_workers(early) == ["gpu0@stays"], 30, what="the offline worker hidden")
        assert machines_shown(early) == ["stays"]
        assert early.get_attribute("#fleet-hidden", "data-hidden") == "1"
        # And a page opened now shows the same, and the API agrees
        late = pages.open("/?view=cards")
        wait_for(lambda: shown_workers(late) == ["gpu0@stays"], 20, what="the late page's fleet")
        assert machines_shown(late) == ["stays"]
        assert [w["name"] for w in monitor.get("/api/workers")["workers"]] == ["gpu0@stays"]
        assert len(monitor.get("/api/workers?status=all")["workers"]) == 2
        # And the link lists every worker again, as ?status=all does
        late.click("#fleet-hidden")
        wait_for(lambda: shown_workers(late) == ["gpu0@stays", "gpu1@leaves"], 20, what="all workers after the link")
        assert "status=all" in late.url
        assert pages.errors == []
    finally:
        pages.close()
