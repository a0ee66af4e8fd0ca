"""Tenants through the real path (issue 24, point 5): real ``jobqueue monitor`` processes on the
test's Redis, real HTTP with real API keys of two tenants and an admin, a real websocket client.
A tenant sees only its own jobs and counts; another tenant's job id answers 404 on every route
of the URL map that takes one; admins see all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from jobqueue.config import Settings
from monitor.app import create_app
from monitor.web.routes import collect
from tests.helpers import wait_for
from tests.monitor.web import sso_providers

provider = sso_providers.provider
oidc_monitor = sso_providers.oidc_monitor

pytestmark = [pytest.mark.timeout(240)]

TOKEN = "tenants-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
QUEUED = {"service": "simulation", "payload": {"steps": 1}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(monitor: Any, role: str, tenant: str | None = None) -> dict[str, str]:
    """The Authorization header of a new key made by the admin through the API."""
    body: dict[str, Any] = {"role": role, **({"tenant": tenant} if tenant else {})}
    res = requests.post(f"{monitor.url}/api/keys", json=body, headers=ADMIN, timeout=10)
    assert res.status_code == 201, res.text
    return bearer(res.json()["key"])


def submit(monitor: Any, headers: dict[str, str], **fields: Any) -> list[str]:
    """Submit through ``POST /api/jobs``; wait until the monitor holds the jobs; their ids."""
    res = requests.post(f"{monitor.url}/api/jobs", json={**QUEUED, **fields}, headers=headers, timeout=10)
    assert res.status_code == 201, res.text
    ids = [j["id"] for j in res.json()["jobs"]]
    for job_id in ids:
        wait_for(lambda j=job_id: get(monitor, f"/api/jobs/{j}", ADMIN).status_code == 200, 20,
                 what=f"the monitor to hold job {job_id}")
    return ids


def get(monitor: Any, path: str, headers: dict[str, str], **params: Any) -> requests.Response:
    return requests.get(monitor.url + path, headers=headers, params=params, timeout=10, allow_redirects=False)


class Fleet:
    """A monitor with a token, a viewer and an operator key for tenants acme and globex, and
    jobs of acme (2, one workflow), globex (1) and the fleet's own (1, no tenant)."""

    def __init__(self, start_monitor: Any) -> None:
        # (fair share off: one queue per service, so a queued job's place counts every tenant's jobs
        # ahead of it; under fair share each tenant's jobs wait in a queue of their own)
        self.monitor = start_monitor(MONITOR_TOKEN=TOKEN, FAIR_SHARE="0")
        self.acme, self.acme_op = new_key(self.monitor, "viewer", "acme"), new_key(self.monitor, "operator", "acme")
        self.globex, self.globex_op = new_key(self.monitor, "viewer", "globex"), new_key(self.monitor, "operator", "globex")
        self.acme_jobs = submit(self.monitor, self.acme_op, count=2, workflow_id="wf-acme", step=1)
        self.globex_jobs = submit(self.monitor, self.globex_op, workflow_id="wf-globex", step=1)
        self.fleet_jobs = submit(self.monitor, ADMIN)


@pytest.fixture
def fleet(start_monitor: Any) -> Fleet:
    return Fleet(start_monitor)


def test_a_tenant_sees_only_its_own_jobs_and_counts_while_admins_see_all(fleet):
    m = fleet.monitor
    # Given jobs of two tenants and one of none, each submitted with its caller's key
    # Then the jobs list, its total and the snapshot hold only acme's jobs for acme's key
    page = get(m, "/api/jobs", fleet.acme).json()
    assert sorted(j["id"] for j in page["jobs"]) == sorted(fleet.acme_jobs) and page["total"] == 2
    assert {j["tenant"] for j in page["jobs"]} == {"acme"}
    state = get(m, "/api/state", fleet.acme).json()
    assert sorted(j["id"] for j in state["jobs"]) == sorted(fleet.acme_jobs)
    # And asking for another tenant's jobs by filter finds none; by workflow, none either
    assert get(m, "/api/jobs", fleet.acme, tenant="globex").json()["total"] == 0
    assert get(m, "/api/jobs", fleet.acme, workflow="wf-globex").json()["total"] == 0
    assert get(m, "/api/workflows/wf-globex", fleet.acme).status_code == 404
    assert get(m, "/api/workflows/wf-acme", fleet.acme).status_code == 200
    # And its counts, estimates and waiting jobs are its own
    assert get(m, "/api/stats", fleet.acme).json()["services"]["simulation"]["count"] == 2
    assert set(get(m, "/api/estimates", fleet.acme).json()["jobs"]) == set(fleet.acme_jobs)
    assert set(get(m, "/api/waiting", fleet.acme).json()["waiting"]) <= set(fleet.acme_jobs)
    assert get(m, "/api/stats", fleet.acme).json()["history"] == []
    # And globex's key sees only globex's
    assert [j["id"] for j in get(m, "/api/jobs", fleet.globex).json()["jobs"]] == fleet.globex_jobs
    assert set(get(m, "/api/estimates", fleet.globex).json()["jobs"]) == set(fleet.globex_jobs)
    # And its queued job's place counts the jobs ahead of it, whoever's (acme's two), in the
    # snapshot as in the estimates
    place = get(m, "/api/estimates", fleet.globex).json()["jobs"][fleet.globex_jobs[0]]["position"]
    assert place == 3 and [j["queue_position"] for j in get(m, "/api/state", fleet.globex).json()["jobs"]] == [3]
    # While the admin sees every job with its tenant, and filters by tenant
    everything = {j["id"]: j["tenant"] for j in get(m, "/api/jobs", ADMIN).json()["jobs"]}
    assert everything == {**dict.fromkeys(fleet.acme_jobs, "acme"), **dict.fromkeys(fleet.globex_jobs, "globex"),
                          **dict.fromkeys(fleet.fleet_jobs)}
    assert get(m, "/api/jobs", ADMIN, tenant="acme").json()["total"] == 2
    assert get(m, "/api/stats", ADMIN).json()["services"]["simulation"]["count"] == 4
    assert set(get(m, "/api/estimates", ADMIN).json()["jobs"]) == set(everything)
    # And the fleet-wide routes and controls are closed to a tenant's keys (403), not to the admin
    for path in ("/metrics", "/api/queues", "/api/dead-letters"):
        assert get(m, path, fleet.acme).status_code == 403, path
        assert get(m, path, ADMIN).status_code == 200, path
    for action in ("drain", "resume"):
        res = requests.post(f"{m.url}/api/workers/gpu0@x/{action}", json={}, headers=fleet.acme_op, timeout=10)
        assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden", action


def job_routes(tmp_path: Path, redis_url: str) -> list[tuple[str, str]]:
    """Every (rule, method) of the app's URL map that names a job, as the app declares them."""
    app = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'routes.db'}", monitor_token=TOKEN,
                              broker_url=redis_url).resolved())
    try:
        declared = collect(app)
        return sorted((rule.rule, declared[rule.endpoint].method) for rule in app.url_map.iter_rules()
                      if "<job_id>" in rule.rule)
    finally:
        app.extensions["jobqueue_monitor"].close()


def concrete(rule: str, job_id: str) -> str:
    return rule.replace("<job_id>", job_id).replace("<name>", "out.png")


def test_every_route_that_names_a_job_answers_404_for_another_tenants_job(fleet, tmp_path, redis_url):
    m = fleet.monitor
    theirs = fleet.globex_jobs[0]
    before = get(m, "/api/jobs", ADMIN).json()["total"]
    routes = job_routes(tmp_path, redis_url)
    # Given every route of the URL map that takes a job id (a new one is walked too)
    assert len(routes) >= 8 and ("/jobs/<job_id>/files/<name>", "GET") in routes
    for rule, method in routes:
        for headers in (fleet.acme, fleet.acme_op):
            # When acme's keys ask for it with globex's job, and with an id nobody knows
            foreign = requests.request(method, m.url + concrete(rule, theirs), headers=headers, timeout=10,
                                       json={} if method == "POST" else None, allow_redirects=False)
            unknown = requests.request(method, m.url + concrete(rule, "no-such-job"), headers=headers, timeout=10,
                                       json={} if method == "POST" else None, allow_redirects=False)
            if method == "POST" and headers is fleet.acme:  # a viewer may not use a control at all
                assert foreign.status_code == unknown.status_code == 403, (rule, foreign.text)
                continue
            # Then both are the same 404: the job's existence is not told
            assert foreign.status_code == 404, (rule, method, foreign.status_code, foreign.text[:200])
            assert foreign.json()["error"] == {**unknown.json()["error"],
                                               "message": unknown.json()["error"]["message"].replace("no-such-job", theirs)}
    # And the job's own tenant and the admin do get it
    for headers in (fleet.globex, ADMIN):
        assert get(m, f"/api/jobs/{theirs}", headers).json()["tenant"] == "globex"
        assert get(m, f"/jobs/{theirs}", headers).status_code == 200
        assert get(m, f"/api/jobs/{theirs}/webhooks", headers).status_code == 200
    # And acme's cancel and retry changed nothing: the job still waits, no copy was made
    assert get(m, f"/api/jobs/{theirs}", ADMIN).json()["status"] == "queued"
    assert get(m, "/api/jobs", ADMIN).json()["total"] == before
    # While a tenant's operator cancels its own job
    mine = fleet.acme_jobs[0]
    assert requests.post(f"{m.url}/api/jobs/{mine}/cancel", json={}, headers=fleet.acme_op, timeout=10).status_code == 202


def frames_until(ws: Any, seq: int) -> list[dict[str, Any]]:
    """Every message of ``ws`` until one at ``seq`` or beyond."""
    out: list[dict[str, Any]] = []
    while not out or out[-1].get("seq", -1) < seq:
        out.append(json.loads(ws.recv()))
    return out


def test_a_tenants_websocket_gets_its_own_jobs_only_in_the_snapshot_and_live(fleet):
    m = fleet.monitor
    url = f"ws://127.0.0.1:{m.port}/ws"
    # Given a socket of acme's viewer and one of the admin
    mine = websocket.create_connection(url, timeout=20, header=[f"Authorization: {fleet.acme['Authorization']}"])
    admin = websocket.create_connection(url, timeout=20, header=[f"Authorization: Bearer {TOKEN}"])
    try:
        # Then acme's snapshot holds only acme's jobs, and workers without their current job
        snapshot = json.loads(mine.recv())
        assert snapshot["type"] == "snapshot"
        assert sorted(j["id"] for j in snapshot["state"]["jobs"]) == sorted(fleet.acme_jobs)
        assert all(w["current_job"] is None for w in snapshot["state"]["workers"])
        admin_snapshot = json.loads(admin.recv())
        assert len(admin_snapshot["state"]["jobs"]) == 4
        # When globex and acme submit one more job each
        theirs = submit(m, fleet.globex_op)[0]
        new = submit(m, fleet.acme_op)[0]
        head = get(m, "/api/state", ADMIN).json()["seq"]
        # Then acme's socket gets every seq in order, its own job's changes, and of globex's only
        # a hidden place in the sequence: the id is never sent
        raw = frames_until(mine, head)
        seqs = [f["seq"] for f in raw]
        assert seqs == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(seqs)))
        jobs = [f for f in raw if f["kind"] == "job"]
        assert jobs and {f["data"]["tenant"] for f in jobs} == {"acme"} and new in {f["id"] for f in jobs}
        assert all(f["id"] is None and f["data"] is None for f in raw if f["kind"] == "hidden")
        assert theirs not in json.dumps(raw)
        # While the admin's socket gets both jobs
        seen = {f["id"] for f in frames_until(admin, head) if f["kind"] == "job"}
        assert {theirs, new} <= seen
        # And a reconnecting tenant's socket (?since=) catches up on the same terms
        again = websocket.create_connection(f"{url}?since={snapshot['seq']}", timeout=20,
                                            header=[f"Authorization: {fleet.acme['Authorization']}"])
        try:
            replay = frames_until(again, head)
            assert [f["seq"] for f in replay] == seqs and theirs not in json.dumps(replay)
        finally:
            again.close()
    finally:
        mine.close()
        admin.close()


@pytest.mark.slow
def test_a_monitor_started_late_shows_each_job_with_its_tenant_and_serves_its_files_to_it_alone(
        app, start_worker, start_monitor, tmp_path: Path):
    from jobqueue.client.jobs import submit_job

    # Given jobs of two tenants that ran to the end on a real worker, with an output file,
    # and one of globex still waiting in its queue once the worker stopped, before any monitor ran
    worker = start_worker("gpu0")
    files = [{"kind": "image", "mb": 0.01, "name": "out.png"}]
    acme = submit_job("simulation", {"steps": 2, "step_seconds": 0.05, "files": files}, tenant="acme", app=app)
    globex = submit_job("simulation", {"steps": 2, "step_seconds": 0.05}, tenant="globex", app=app)
    acme.wait(timeout=60)
    globex.wait(timeout=60)
    worker.stop()
    waiting = submit_job("simulation", {"steps": 1}, tenant="globex", app=app)
    # When a monitor starts only now (the events are gone: it learns from the records)
    late = start_monitor("late.db", MONITOR_TOKEN=TOKEN, monitor_repair_interval="2")
    acme_key, globex_key = new_key(late, "viewer", "acme"), new_key(late, "viewer", "globex")

    def tenants() -> dict[str, Any]:
        found = {j["id"]: (j["tenant"], j["status"]) for j in get(late, "/api/jobs", ADMIN).json()["jobs"]}
        return {h.id: found.get(h.id) for h in (acme, globex, waiting)}

    # Then it shows each job with the tenant it was submitted for
    want = {acme.id: ("acme", "completed"), globex.id: ("globex", "completed"), waiting.id: ("globex", "queued")}
    wait_for(lambda: tenants() == want, 30, interval=0.5, what=f"the late monitor to know the tenants: {tenants()}")
    # And each tenant sees its own jobs only
    assert [j["id"] for j in get(late, "/api/jobs", acme_key).json()["jobs"]] == [acme.id]
    assert sorted(j["id"] for j in get(late, "/api/jobs", globex_key).json()["jobs"]) == sorted([globex.id, waiting.id])
    # And acme's output file is served to acme and the admin, and is a 404 for globex
    assert get(late, f"/jobs/{acme.id}/files/out.png", acme_key).status_code == 200
    assert get(late, f"/jobs/{acme.id}/files/out.png", ADMIN).status_code == 200
    assert get(late, f"/jobs/{acme.id}/files/out.png", globex_key).status_code == 404


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the mock provider uses old Authlib APIs
def test_a_user_mapped_to_a_tenant_by_single_sign_on_sees_only_that_tenants_jobs(oidc_monitor, provider):
    from tests.monitor.web.test_sso_http import sso_login

    # Given a monitor with OIDC single sign-on (acme.test users: tenant acme-default), and jobs
    # the admin submitted for acme-default and for beta
    monitor = oidc_monitor()
    sso_admin = {"Authorization": f"Bearer {sso_providers.TOKEN}"}
    ours = requests.post(f"{monitor.url}/api/jobs", json={**QUEUED, "tenant": "acme-default"}, headers=sso_admin,
                         timeout=10).json()["jobs"][0]["id"]
    theirs = requests.post(f"{monitor.url}/api/jobs", json={**QUEUED, "tenant": "beta"}, headers=sso_admin,
                           timeout=10).json()["jobs"][0]["id"]
    for job_id in (ours, theirs):
        wait_for(lambda j=job_id: get(monitor, f"/api/jobs/{j}", sso_admin).status_code == 200, 20,
                 what=f"the monitor to hold job {job_id}")
    # When alice signs on
    alice, res = sso_login(monitor, "alice")
    assert res.status_code == 302
    # Then her session lists acme-default's job only, and beta's is a 404 for her
    listed = alice.get(f"{monitor.url}/api/jobs", timeout=10).json()
    assert [j["id"] for j in listed["jobs"]] == [ours] and listed["total"] == 1
    assert alice.get(f"{monitor.url}/api/jobs/{theirs}", timeout=10).status_code == 404
    assert alice.get(f"{monitor.url}/api/jobs/{ours}", timeout=10).json()["tenant"] == "acme-default"
    # While root, an admin (of tenant acme), sees both
    root, _ = sso_login(monitor, "root")
    assert {j["id"] for j in root.get(f"{monitor.url}/api/jobs", timeout=10).json()["jobs"]} == {ours, theirs}


def test_a_canvas_and_a_jobs_children_hold_only_the_callers_own_tasks(tmp_path, redis_url):
    from monitor.merge.apply import apply
    from monitor.store.access import create_key

    # Given a chain whose root belongs to acme and whose two children belong to acme and globex
    app = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'c.db'}", monitor_token=TOKEN,
                              broker_url=redis_url).resolved())
    try:
        store = app.extensions["jobqueue_monitor"].store

        def sent(uuid: str, tenant: str, t: float, **links: str) -> dict[str, Any]:
            return {"type": "task-sent", "uuid": uuid, "timestamp": 1_800_000_000.0 + t, **links,
                    "kwargs": json.dumps({"service": "simulation", "tenant": tenant})}

        with store.write() as tx:
            for event in (sent("root", "acme", 0), sent("mine", "acme", 1, parent_id="root", root_id="root"),
                          sent("theirs", "globex", 2, parent_id="root", root_id="root")):
                apply(event, tx)
        acme = bearer(create_key(store, "viewer", tenant="acme")[0])
        client = app.test_client()
        # Then acme's key sees its own children and canvas tasks, never globex's
        assert client.get("/api/jobs/root", headers=acme).get_json()["children"] == ["mine"]
        assert [n["id"] for n in client.get("/api/jobs/root/canvas", headers=acme).get_json()["nodes"]] == ["root", "mine"]
        # While the admin sees them all
        assert client.get("/api/jobs/root", headers=ADMIN).get_json()["children"] == ["mine", "theirs"]
        assert len(client.get("/api/jobs/root/canvas", headers=ADMIN).get_json()["nodes"]) == 3
        # And globex's child is a 404 for acme, its canvas too
        assert client.get("/api/jobs/theirs/canvas", headers=acme).status_code == 404
    finally:
        app.extensions["jobqueue_monitor"].close()
