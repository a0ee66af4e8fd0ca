"""Access control through the real path: ``jobqueue monitor`` processes (gunicorn) on the
test's Redis database, real HTTP. Auth on every read, roles, API keys (API and CLI), login
sessions, the audit trail and rate limits (issue 24)."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from typing import Any

import pytest
import requests
import websocket

from jobqueue.config import Settings
from monitor.store import Store
from monitor.store.access import create_key
from tests.helpers import ROOT, child_env, wait_for
from tests.monitor.hostile_data import strict_json

pytestmark = [pytest.mark.timeout(180)]

TOKEN = "admin-t0ken"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(monitor: Any, role: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """An API key made by the admin through the API."""
    res = requests.post(f"{monitor.url}/api/keys", json={"role": role, **fields}, headers=ADMIN, timeout=10)
    assert res.status_code == 201, res.text
    body = res.json()
    return body["key"], body["info"]


def audit(monitor: Any, **filters: str) -> list[dict[str, Any]]:
    res = requests.get(f"{monitor.url}/api/audit", params=filters, headers=ADMIN, timeout=10)
    assert res.status_code == 200, res.text
    entries: list[dict[str, Any]] = res.json()["entries"]
    return entries


def operations(monitor: Any) -> list[tuple[str, str, dict[str, Any]]]:
    doc = requests.get(f"{monitor.url}/api/openapi.json", headers=ADMIN, timeout=10).json()
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def concrete(path: str) -> str:
    return path.replace("{filename}", "css/app.css").replace("{", "").replace("}", "")


# -- auth on everything ---------------------------------------------------------------------


def test_with_a_token_set_nothing_but_health_login_and_static_files_answers_without_credentials(start_monitor):
    # Given a monitor with a token
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    # When every route of its own document is called without credentials
    for path, method, op in operations(monitor):
        if path == "/ws":  # a websocket route: only a handshake matches it (below)
            continue
        url = monitor.url + concrete(path)
        res = requests.request(method.upper(), url, json={} if method == "post" else None, timeout=10,
                               allow_redirects=False)
        if op["x-role"] == "public":
            assert res.status_code < 500, (path, method, res.status_code)
            continue
        # Then pages send the browser to the login page and everything else is a JSON 401
        if "302" in op["responses"]:
            assert res.status_code == 302 and res.headers["Location"].startswith("/login?next="), (path, res.status_code)
        else:
            assert res.status_code == 401, (path, method, res.status_code, res.text[:200])
            assert strict_json(res.text)["error"]["code"] == "unauthorized"
    # And the file, preview and webhook routes of a job are closed too
    for path in ("/jobs/x/files/a.png", "/api/jobs/x/preview", "/api/jobs/x/webhooks", "/metrics",
                 "/api/openapi.json"):
        assert requests.get(monitor.url + path, timeout=10).status_code == 401, path
    # And the websocket handshake is refused, while with the token it opens
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{monitor.port}/ws", timeout=10)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(f"ws://127.0.0.1:{monitor.port}/ws", timeout=10, header=[f"Authorization: Bearer {TOKEN}"])
    assert strict_json(ws.recv())["type"] == "snapshot"
    ws.close()
    # And /healthz answers, with nothing private in it
    health = requests.get(monitor.url + "/healthz", timeout=10).json()
    assert health["ok"] is True and set(health["collector"]) == {"alive", "connected"}
    assert "writer" not in str(health) and "last_error" not in str(health)
    # While with the token it tells everything
    assert "writer" in requests.get(monitor.url + "/healthz", headers=ADMIN, timeout=10).json()["collector"]


def test_public_read_opens_reads_but_not_controls(start_monitor):
    # Given a monitor with a token and explicit public reads
    monitor = start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_PUBLIC_READ="true")
    # Then anyone reads pages, the API and the metrics
    assert requests.get(monitor.url + "/api/jobs", timeout=10).status_code == 200
    assert requests.get(monitor.url + "/", timeout=10, allow_redirects=False).status_code == 200
    assert requests.get(monitor.url + "/metrics", timeout=10).status_code == 200
    # But controls and admin reads still need a login
    assert requests.post(monitor.url + "/api/jobs/x/cancel", json={}, timeout=10).status_code == 401
    assert requests.get(monitor.url + "/api/audit", timeout=10).status_code == 401
    assert requests.get(monitor.url + "/api/keys", timeout=10).status_code == 401


def test_metrics_open_to_the_scrape_token_only_or_by_an_explicit_setting(start_monitor):
    # Given a monitor with a token and a metrics token
    monitor = start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_METRICS_TOKEN="scrape-me")
    scrape = bearer("scrape-me")
    # Then the scrape token opens /metrics and nothing else
    assert requests.get(monitor.url + "/metrics", headers=scrape, timeout=10).status_code == 200
    assert requests.get(monitor.url + "/api/jobs", headers=scrape, timeout=10).status_code == 401
    assert requests.get(monitor.url + "/metrics", timeout=10).status_code == 401
    # And a monitor told to serve metrics openly does, without opening anything else
    open_metrics = start_monitor(db_name="open-metrics.db", MONITOR_TOKEN=TOKEN, MONITOR_METRICS_PUBLIC="1")
    assert requests.get(open_metrics.url + "/metrics", timeout=10).status_code == 200
    assert requests.get(open_metrics.url + "/api/jobs", timeout=10).status_code == 401


# -- roles and keys -------------------------------------------------------------------------


def test_each_role_does_what_it_may_and_gets_403_beyond(start_monitor):
    # Given a monitor with a token, and a viewer, an operator and an admin key made by the admin
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    viewer, _ = new_key(monitor, "viewer")
    operator, _ = new_key(monitor, "operator", tenant="acme")
    admin, _ = new_key(monitor, "admin")
    worker_shutdown = f"{monitor.url}/api/workers/nobody/shutdown"
    # Then a viewer reads but may not act
    assert requests.get(monitor.url + "/api/jobs", headers=bearer(viewer), timeout=10).status_code == 200
    refused = requests.post(monitor.url + "/api/jobs/x/cancel", json={}, headers=bearer(viewer), timeout=10)
    assert refused.status_code == 403 and strict_json(refused.text)["error"]["code"] == "forbidden"
    # And an operator submits and cancels, but may not shut workers down nor see keys or the audit
    submitted = requests.post(monitor.url + "/api/jobs", json={"service": "simulation", "payload": {"steps": 1}},
                              headers=bearer(operator), timeout=10)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["jobs"][0]["id"]
    assert requests.post(f"{monitor.url}/api/jobs/{job_id}/cancel", json={}, headers=bearer(operator),
                         timeout=10).status_code in (202, 404, 409)
    assert requests.post(worker_shutdown, json={}, headers=bearer(operator), timeout=10).status_code == 403
    assert requests.get(monitor.url + "/api/keys", headers=bearer(operator), timeout=10).status_code == 403
    assert requests.get(monitor.url + "/api/audit", headers=bearer(operator), timeout=10).status_code == 403
    # And an admin key gets past the role check everywhere (the worker is unknown: 404)
    assert requests.post(worker_shutdown, json={}, headers=bearer(admin), timeout=10).status_code == 404
    assert requests.get(monitor.url + "/api/audit", headers=bearer(admin), timeout=10).status_code == 200
    # And basic auth is an admin too
    basic_monitor = start_monitor(db_name="basic.db", MONITOR_BASIC_AUTH="ann:pw")
    basic = {"Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}
    assert requests.get(basic_monitor.url + "/api/keys", headers=basic, timeout=10).status_code == 200


def test_a_wrong_revoked_or_expired_key_gets_401_and_changes_nothing(start_monitor, tmp_path):
    # Given a monitor with an operator key, and a key that expired a moment ago in its store
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    key, info = new_key(monitor, "operator", name="ci")
    store = Store(f"sqlite:///{tmp_path / 'monitor.db'}")
    expired, _ = create_key(store, "operator", expires_at=time.time() - 1)
    store.close()
    listed = requests.get(monitor.url + "/api/keys", headers=ADMIN, timeout=10).json()["keys"]
    # Then the list never shows a secret nor a hash
    assert key not in str(listed) and key.split("_", 2)[2] not in str(listed) and "hash" not in str(listed)
    assert {k["id"]: k["state"] for k in listed}[info["id"]] == "active"
    # When the key is revoked
    revoked = requests.post(f"{monitor.url}/api/keys/{info['id']}/revoke", json={}, headers=ADMIN, timeout=10)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    # Then it, the expired key, a made-up key and a tampered key all get 401, and no job is submitted
    before = requests.get(monitor.url + "/api/jobs", headers=ADMIN, timeout=10).json()["total"]
    tampered = key[:-3] + ("aaa" if not key.endswith("aaa") else "bbb")
    for bad in (key, expired, "jq_0123456789ab_" + "x" * 43, tampered, "nonsense"):
        res = requests.post(monitor.url + "/api/jobs", json={"service": "simulation", "payload": {"steps": 1}},
                            headers=bearer(bad), timeout=10)
        assert res.status_code == 401, (bad, res.text)
        assert res.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(monitor.url + "/api/jobs", headers=ADMIN, timeout=10).json()["total"] == before
    # And revoking an unknown key is a 404
    assert requests.post(f"{monitor.url}/api/keys/nope/revoke", json={}, headers=ADMIN, timeout=10).status_code == 404


def _cli(tmp_path: Any, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env({**settings.to_env(), "JOBQUEUE_MONITOR_DB": f"sqlite:///{tmp_path / 'monitor.db'}"})
    return subprocess.run([sys.executable, "-m", "jobqueue.cli", "keys", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_keys_made_with_the_cli_work_over_http_until_revoked(start_monitor, settings, tmp_path):
    # Given a monitor with a token
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    # When an admin creates a key on the command line
    made = _cli(tmp_path, settings, "create", "--role", "operator", "--tenant", "acme", "--expires", "90d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("jq_") and "shown once" in made.stderr
    # Then the key works over HTTP, and the list shows its role, tenant and expiry
    assert requests.get(monitor.url + "/api/jobs", headers=bearer(key), timeout=10).status_code == 200
    listed = _cli(tmp_path, settings, "list")
    key_id = key.split("_")[1]
    assert key_id in listed.stdout and '"tenant": "acme"' in listed.stdout and key not in listed.stdout
    # When it is revoked on the command line
    assert _cli(tmp_path, settings, "revoke", key_id).returncode == 0
    # Then it is refused, and the audit trail holds both changes
    assert requests.get(monitor.url + "/api/jobs", headers=bearer(key), timeout=10).status_code == 401
    wait_for(lambda: len(audit(monitor, target=f"key:{key_id}")) >= 2, 10, what="both key changes in the audit")
    actions = [e["action"] for e in audit(monitor, target=f"key:{key_id}")]
    assert sorted(actions) == ["key.create", "key.revoke"]
    # And bad input is a clean error
    assert _cli(tmp_path, settings, "create", "--role", "operator", "--expires", "soon").returncode == 2
    assert _cli(tmp_path, settings, "revoke", "nope").returncode == 1


# -- sessions -------------------------------------------------------------------------------


def test_a_login_sets_a_signed_httponly_cookie_that_a_forgery_cannot_imitate(start_monitor):
    # Given a monitor with a token and a viewer key
    monitor = start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_SESSION_SECONDS="3600")
    key, info = new_key(monitor, "viewer")
    # When the viewer logs in through the login route
    login = requests.post(monitor.url + "/login", json={"credential": key}, timeout=10)
    assert login.status_code == 200 and login.json()["role"] == "viewer"
    cookie = login.headers["Set-Cookie"]
    # Then the cookie is HttpOnly, SameSite=Lax, expires, and (plain http) not Secure
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=3600" in cookie and "Secure" not in cookie
    session = login.cookies["jobqueue_session"]
    jar = {"jobqueue_session": session}
    assert requests.get(monitor.url + "/api/jobs", cookies=jar, timeout=10).status_code == 200
    assert requests.get(monitor.url + "/", cookies=jar, timeout=10, allow_redirects=False).status_code == 200
    # And a cookie claiming admin, or a tampered one, gets 401 (pages: the login page)
    forged = session.split(".")
    forged[0] = base64.urlsafe_b64encode(b'{"s":"token","r":"admin","x":"token"}').decode().rstrip("=")
    for bad in (".".join(forged), session[:-2] + "xx", "garbage"):
        assert requests.get(monitor.url + "/api/keys", cookies={"jobqueue_session": bad}, timeout=10).status_code == 401
        page = requests.get(monitor.url + "/", cookies={"jobqueue_session": bad}, timeout=10, allow_redirects=False)
        assert page.status_code == 302
    # And behind a TLS proxy the cookie is Secure
    proxied = requests.post(monitor.url + "/login", json={"credential": key}, headers={"X-Forwarded-Proto": "https"},
                            timeout=10)
    assert "Secure" in proxied.headers["Set-Cookie"]
    # And the cookie cannot act cross-site, nor with a form body
    cancel = monitor.url + "/api/jobs/x/cancel"
    assert requests.post(cancel, json={}, cookies=jar, headers={"Origin": "http://evil.example"},
                         timeout=10).status_code == 403
    assert requests.post(cancel, data={"a": "1"}, cookies=jar, timeout=10).status_code == 403
    # And revoking the key ends its session at once
    requests.post(f"{monitor.url}/api/keys/{info['id']}/revoke", json={}, headers=ADMIN, timeout=10)
    assert requests.get(monitor.url + "/api/jobs", cookies=jar, timeout=10).status_code == 401
    # And a wrong credential gets no cookie
    wrong = requests.post(monitor.url + "/login", json={"credential": "nope"}, timeout=10)
    assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers


# -- audit ----------------------------------------------------------------------------------


def test_controls_logins_and_refusals_are_audited_and_the_trail_cannot_be_edited(start_monitor):
    # Given a monitor with a token and an operator key
    monitor = start_monitor(MONITOR_TOKEN=TOKEN)
    key, info = new_key(monitor, "operator", tenant="acme")
    # When the operator cancels an unknown job, a stranger tries with a wrong key and without
    # any credentials, and logins happen
    requests.post(monitor.url + "/api/jobs/job-1/cancel", json={}, headers=bearer(key), timeout=10)
    requests.post(monitor.url + "/api/jobs/job-2/cancel", json={}, headers=bearer("jq_wrong"), timeout=10)
    requests.post(monitor.url + "/api/jobs/job-3/cancel", json={}, timeout=10)
    requests.post(monitor.url + "/login", json={"credential": "wrong"}, timeout=10)
    requests.post(monitor.url + "/login", json={"credential": key}, timeout=10)
    # Then each is in the trail: who, role, tenant, address, what, target, outcome, when
    wait_for(lambda: len(audit(monitor, action="cancel")) == 2, 10, what="the cancels in the audit trail")
    by_target = {e["target"]: e for e in audit(monitor, action="cancel")}
    done = by_target["job-1"]
    assert (done["subject"], done["role"], done["tenant"], done["address"]) == (f"key:{info['id']}", "operator",
                                                                              "acme", "127.0.0.1")
    assert done["status"] == 404 and done["outcome"] == "failed" and abs(done["at"] - time.time()) < 60
    assert (by_target["job-2"]["subject"], by_target["job-2"]["outcome"]) == ("anonymous", "refused")
    assert "job-3" not in by_target  # no credentials at all: a scan writes nothing
    wait_for(lambda: len(audit(monitor, action="login")) == 2, 10, what="the logins in the audit trail")
    logins = {e["outcome"]: e for e in audit(monitor, action="login")}
    assert logins["refused"]["status"] == 401 and logins["ok"]["target"] == f"key:{info['id']}"
    assert "wrong" not in str(audit(monitor))  # a refused secret is never written down
    # And filters and paging work
    first = requests.get(monitor.url + "/api/audit", params={"limit": 1}, headers=ADMIN, timeout=10).json()
    second = requests.get(monitor.url + "/api/audit", params={"limit": 1, "offset": 1}, headers=ADMIN, timeout=10).json()
    assert first["total"] == second["total"] >= 5 and first["entries"][0]["id"] != second["entries"][0]["id"]
    assert all(e["outcome"] == "refused" for e in audit(monitor, outcome="refused"))
    # And no method changes it
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        res = requests.request(method, monitor.url + "/api/audit", json={}, headers=ADMIN, timeout=10)
        assert res.status_code == 405, method


def _audit_through_a_writer(path: Any, keep_days: float) -> list[dict[str, Any]]:
    """Entries of 401 days ago and of now, written and pruned by a store's writer."""
    from monitor.ingest.hub import ChangeHub
    from monitor.ingest.writer import Writer
    from monitor.store.access import read_audit

    store = Store(f"sqlite:///{path}", audit_keep_seconds=keep_days * 86400.0)
    writer = Writer(store, ChangeHub(), prune_interval=3600)
    for at in (time.time() - 401 * 86400, time.time()):
        writer.audit({"at": at, "subject": "token", "role": "admin", "tenant": None, "address": "127.0.0.1",
                      "action": "cancel", "target": "j", "outcome": "ok", "status": 202, "detail": ""})
    writer.start()  # its first round writes the queued entries, then prunes
    try:
        assert writer.wait_idle()
        return read_audit(store)[0]
    finally:
        writer.stop()
        store.close()


def test_audit_entries_older_than_the_keep_days_are_pruned_by_the_writer(tmp_path):
    # Given entries of 401 days ago and of now, written through the single writer
    # When it prunes with 400 days kept, then only the recent entry is left
    kept = _audit_through_a_writer(tmp_path / "a.db", 400)
    assert len(kept) == 1 and kept[0]["at"] > time.time() - 60
    # While with 500 days kept, both are
    assert len(_audit_through_a_writer(tmp_path / "b.db", 500)) == 2


# -- rate limits ----------------------------------------------------------------------------


def test_logins_wrong_credentials_and_submits_are_rate_limited_with_retry_after(start_monitor, redis_client):
    # Given a monitor with low limits (counters in the broker's Redis)
    monitor = start_monitor(MONITOR_TOKEN=TOKEN, MONITOR_RATE_LOGIN="3/minute", MONITOR_RATE_SUBMIT="2/minute")
    key_a, _ = new_key(monitor, "operator")
    key_b, _ = new_key(monitor, "operator")
    # When an address tries wrong logins
    codes = [requests.post(monitor.url + "/login", json={"credential": f"guess{i}"}, timeout=10).status_code
             for i in range(4)]
    # Then the fourth is refused with 429, Retry-After and the JSON error shape
    assert codes == [401, 401, 401, 429]
    limited = requests.post(monitor.url + "/login", json={"credential": TOKEN}, timeout=10)
    assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 61
    assert strict_json(limited.text)["error"]["code"] == "rate_limited"
    # And guessing through the API with wrong bearer tokens is limited the same way
    guesses = [requests.get(monitor.url + "/api/jobs", headers=bearer(f"guess{i}"), timeout=10).status_code
               for i in range(4)]
    assert guesses[-1] == 429
    # And each key has its own submit budget
    body = {"service": "simulation", "payload": {"steps": 1}}
    a = [requests.post(monitor.url + "/api/jobs", json=body, headers=bearer(key_a), timeout=10).status_code
         for _ in range(3)]
    b = requests.post(monitor.url + "/api/jobs", json=body, headers=bearer(key_b), timeout=10)
    assert a == [201, 201, 429] and b.status_code == 201
    # And the counters are in the broker's Redis
    assert any(b"jobqueue-monitor" in k for k in redis_client.keys("*"))
    # And refusals for rate are audited
    wait_for(lambda: any(e["status"] == 429 for e in audit(monitor, action="submit")), 10, what="429 in the audit")


def test_a_token_session_ends_when_the_token_changes_even_with_a_fixed_session_secret(tmp_path, redis_url):
    from monitor.app import create_app

    def app_with(token: str) -> Any:
        return create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 's.db'}", monitor_token=token,
                                   monitor_session_secret="fixed", broker_url=redis_url).resolved())

    # Given a session opened with the token
    first = app_with("old-token")
    login = first.test_client().post("/login", json={"credential": "old-token"})
    assert login.status_code == 200
    cookie = login.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]
    client = first.test_client()
    client.set_cookie("jobqueue_session", cookie)
    assert client.get("/api/keys").status_code == 200
    # When the monitor restarts with another token (same session secret)
    second = app_with("new-token")
    again = second.test_client()
    again.set_cookie("jobqueue_session", cookie)
    # Then the old session is refused
    assert again.get("/api/keys").status_code == 401
    for app in (first, second):
        app.extensions["jobqueue_monitor"].close()


def test_retry_after_counts_down_the_window_of_the_limit_that_was_hit(tmp_path):
    from monitor.app import create_app

    # Given a monitor (no Redis broker: counters in memory) allowing 2 logins an hour
    app = create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'r.db'}", broker_url="amqp://127.0.0.1:5672//",
                              monitor_token=TOKEN, monitor_rate_login="2/hour").resolved())
    client = app.test_client()
    # When a third login comes within the hour
    codes = [client.post("/login", json={"credential": "x"}).status_code for _ in range(3)]
    third = client.post("/login", json={"credential": TOKEN})
    # Then it waits for the hour's window, not a fixed minute, even with the right token
    assert codes == [401, 401, 429] and third.status_code == 429
    assert 3000 < int(third.headers["Retry-After"]) <= 3601
    app.extensions["jobqueue_monitor"].close()


def test_the_websocket_handshake_asks_the_same_access_check_as_every_route(tmp_path, redis_url):
    from werkzeug.datastructures import Headers

    from monitor.app import create_app
    from monitor.web.frames import Refusal
    from monitor.web.routes import Role, spec_for

    def app_with(**extra: Any) -> Any:
        return create_app(Settings(monitor_db=f"sqlite:///{tmp_path / 'ws.db'}", monitor_token=TOKEN,
                                   broker_url=redis_url, **extra).resolved())

    # Given a monitor with a token, whose /ws is declared for viewers
    app = app_with()
    assert spec_for(app, "ws").role is Role.VIEWER
    authorize = app.extensions["jobqueue_ws"].authorize
    with app.test_request_context("/ws", environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        # Then a handshake without or with wrong credentials is refused with 401
        assert authorize(Headers(), {}) == Refusal(401, "log in (Authorization header or session) to use this")
        wrong = authorize(Headers({"Authorization": "Bearer wrong"}), {})
        assert isinstance(wrong, Refusal) and wrong.status == 401
        # And the token opens it, as the admin
        assert authorize(Headers({"Authorization": f"Bearer {TOKEN}"}), {}).role is Role.ADMIN
    # And so does the session cookie of the login page
    client = app.test_client()
    assert client.post("/login", json={"credential": TOKEN}).status_code == 200
    cookie = client.get_cookie("jobqueue_session")
    assert cookie is not None
    with app.test_request_context("/ws", environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        assert authorize(Headers(), {"jobqueue_session": cookie.value}).role is Role.ADMIN
    app.extensions["jobqueue_monitor"].close()
    # And with public reads an anonymous handshake opens as a viewer
    public = app_with(monitor_public_read=True)
    with public.test_request_context("/ws", environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        assert public.extensions["jobqueue_ws"].authorize(Headers(), {}).role is Role.VIEWER
    public.extensions["jobqueue_monitor"].close()
