"""The monitor and workers probed as an attacker would, against the default set-up.

Everything is real: ``jobqueue monitor`` processes (gunicorn) on the test's Redis database,
``celery worker`` subprocesses, Debian's Chromium driven by Playwright, and an attacker's page
served by a second local HTTP server on another port (another origin).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import websocket

from jobqueue import submit_job
from jobqueue.states import JobStatus
from jobqueue.up.embedded import free_port
from tests.helpers import quick, wait_for
from tests.monitor import browser
from tests.monitor.hostile_data import FUTURE, HUGE, plant, seed_events, strict_json

chromium = browser.chromium

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Pages of the dashboard and what each shows once it has rendered its data.
PAGES = {"/": "#summary .stat", "/jobs": "#jobs .job-row", "/jobs/h3": "#job-status [data-status]",
         "/stats": "#chart-times svg", "/client": "#submit"}


# -- fixtures -------------------------------------------------------------------------------


class Attacker:
    """A second local HTTP server (another origin) serving the attacker's pages."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = pages.get(self.path.split("?")[0], "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def cross_site_attack(page: Any, monitor_url: str, form_to: str = "/api/keys") -> tuple[list[tuple[str, int]],
                                                                                       list[str]]:
    """Opens, in ``page``'s browser, an attacker's page on another origin of the same host (same
    site: the browser sends the monitor's cookies) that posts a ``text/plain`` form faking JSON
    to ``form_to`` and three fetches (no-cors to the keys and jobs routes, a CORS one with JSON) to the monitor.
    Returns the (method, status) of every answer from the monitor and the page's fetch results."""
    keys_url, submit_url = f"{monitor_url}/api/keys", f"{monitor_url}/api/jobs"
    attacker = Attacker()
    attacker.pages["/evil.html"] = f"""<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f1" method="POST" action="{monitor_url}{form_to}" target="sink" enctype="text/plain"><input name='{{"role":"admin","service":"simulation","x":"' value='"}}'></form>
<script>
window.results = [];
document.getElementById("f1").submit();
(async () => {{
  for (const [url, mode] of [["{keys_url}", "no-cors"], ["{submit_url}", "no-cors"], ["{keys_url}", "cors"]]) {{
    try {{
      const r = await fetch(url, {{method: "POST", mode, credentials: "include",
        headers: {{"Content-Type": mode === "cors" ? "application/json" : "text/plain"}},
        body: JSON.stringify({{role: "admin", service: "simulation"}})}});
      window.results.push(r.type + " " + r.status);
    }} catch (e) {{ window.results.push("blocked"); }}
  }}
  window.fetched = true;
}})();
</script></body></html>"""
    statuses: list[tuple[str, int]] = []
    try:
        evil = page.context.new_page()
        evil.on("response", lambda r: statuses.append((r.request.method, r.status))
                if r.url.startswith(monitor_url) else None)
        evil.goto(attacker.url + "/evil.html")
        evil.wait_for_function("window.fetched === true")
        wait_for(lambda: len([s for s in statuses if s[0] == "POST"]) >= 3, 15, what="the monitor's answers")
        return statuses, list(evil.evaluate("window.results"))
    finally:
        attacker.stop()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    server = Attacker()
    yield server
    server.stop()


@pytest.fixture
def browser_context(chromium: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def new(**kwargs: Any) -> Any:
        context = chromium.new_context(**kwargs)
        contexts.append(context)
        return context

    yield new
    for context in contexts:
        context.close()


def _worker_status(monitor: Any, name: str) -> str | None:
    res = monitor.get(f"/api/workers/{name}")
    return res.json()["status"] if res.status_code == 200 else None


def _job_status(monitor: Any, job_id: str) -> str | None:
    res = monitor.get(f"/api/jobs/{job_id}")
    return res.json()["status"] if res.status_code == 200 else None


def _rss(proc: Any) -> int:
    """Resident memory of a process and its children (gunicorn's master and worker)."""
    root = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


# -- cross-site requests --------------------------------------------------------------------


def test_a_cross_site_form_post_and_a_no_cors_fetch_change_nothing(app, start_worker, start_monitor, attacker,
                                                                   browser_context):
    # Given the default set-up (no credentials), a worker running a long job, and a monitor
    worker = start_worker("gpu0")
    monitor = start_monitor()
    job = submit_job("simulation", {"steps": 300, "step_seconds": 0.1}, app=app)
    wait_for(lambda: _job_status(monitor, job.id) == "processing", 30, what="the job to run")
    wait_for(lambda: _worker_status(monitor, worker.node_name) == "online", 30, what="the worker online")
    # And an attacker's page on another origin: a form that posts itself to drain the worker
    # (also as text/plain "JSON"), and no-cors fetches that try to cancel the job
    drain = f"{monitor.url}/api/workers/{worker.node_name}/drain"
    cancel = f"{monitor.url}/api/jobs/{job.id}/cancel"
    attacker.pages["/evil.html"] = f"""<!doctype html><html><body>
<iframe name="sink" id="sink"></iframe><iframe name="sink2" id="sink2"></iframe>
<form id="f1" method="POST" action="{drain}" target="sink"><input name="x" value="1"></form>
<form id="f2" method="POST" action="{drain}" target="sink2" enctype="text/plain"><input name='{{"a":"' value='"}}'></form>
<script>
window.results = [];
let loaded = 0;
for (const id of ["sink", "sink2"]) document.getElementById(id).addEventListener("load", () => {{ loaded++; }});
document.getElementById("f1").submit();
document.getElementById("f2").submit();
(async () => {{
  for (const type of ["text/plain", "application/x-www-form-urlencoded"]) {{
    try {{
      const r = await fetch("{cancel}", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": type}}, body: "{{}}"}});
      window.results.push(r.type);
    }} catch (e) {{ window.results.push("error " + e); }}
  }}
  window.fetched = true;
}})();
window.loadedCount = () => loaded;
</script></body></html>"""
    context = browser_context()
    page = context.new_page()
    statuses: list[tuple[str, int]] = []
    page.on("response", lambda r: statuses.append((r.url, r.status)) if r.url.startswith(monitor.url) else None)

    # When a visitor opens the attacker's page
    page.goto(attacker.url + "/evil.html")
    page.wait_for_function("window.fetched === true && window.loadedCount() === 2")
    wait_for(lambda: len(statuses) >= 4, 15, what="the monitor to answer all four requests")

    # Then the monitor refused every one of them (403), and nothing changed
    assert sorted(statuses) == sorted([(drain, 403), (drain, 403), (cancel, 403), (cancel, 403)]), statuses
    assert _worker_status(monitor, worker.node_name) == "online"
    assert _job_status(monitor, job.id) == "processing" and job.status() == JobStatus.PROCESSING
    # And a script on this machine sending JSON without an Origin still acts (no credentials set)
    done = requests.post(cancel, json={}, timeout=10)
    assert done.status_code == 202, done.text
    wait_for(lambda: _job_status(monitor, job.id) == "cancelled", 30, what="the script's cancel to land")


def test_a_control_from_a_foreign_origin_or_without_json_is_refused_in_every_mode(start_monitor):
    # Given monitors without credentials and with a token
    open_monitor = start_monitor(db_name="open.db")
    token_monitor = start_monitor(db_name="token.db", MONITOR_TOKEN="t0k3n")
    for monitor, auth in ((open_monitor, {}), (token_monitor, {"Authorization": "Bearer t0k3n"})):
        url = f"{monitor.url}/api/jobs/nope/cancel"
        # When controls come from another origin, a foreign referer, a rebound host name, or without JSON
        refused = {
            "evil origin": requests.post(url, json={}, headers={**auth, "Origin": "http://evil.example"}, timeout=10),
            "null origin": requests.post(url, json={}, headers={**auth, "Origin": "null"}, timeout=10),
            "evil referer": requests.post(url, json={}, headers={**auth, "Referer": "http://evil.example/x"}, timeout=10),
            "form body": requests.post(url, data={"a": "1"}, headers=auth, timeout=10),
            "text body": requests.post(url, data="{}", headers={**auth, "Content-Type": "text/plain"}, timeout=10),
        }
        # Then each is refused with 403 and a JSON error
        for what, res in refused.items():
            assert res.status_code == 403, (what, res.status_code, res.text)
            assert strict_json(res.text)["error"]["code"] in ("cross_site", "json_required"), what
        # And the monitor's own origin with JSON gets past the door (the job is unknown: 404)
        own = requests.post(url, json={}, headers={**auth, "Origin": monitor.url}, timeout=10)
        assert own.status_code == 404, own.text
    # And without credentials a DNS-rebound host name cannot act even from "its own" origin
    rebound = requests.post(f"{open_monitor.url}/api/jobs/nope/cancel", json={},
                            headers={"Host": "rebound.example:80", "Origin": "http://rebound.example:80"}, timeout=10)
    assert rebound.status_code == 403 and strict_json(rebound.text)["error"]["code"] == "bad_host"


# -- websocket ------------------------------------------------------------------------------


def test_an_evil_origin_websocket_is_refused_and_big_frames_close_the_socket(start_monitor):
    # Given a monitor, and its memory once it serves
    monitor = start_monitor()
    ws_url = f"ws://127.0.0.1:{monitor.port}/ws"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        # When a page of another origin opens /ws, then the handshake is refused
        websocket.create_connection(ws_url, origin="http://evil.example", timeout=10)
    assert refused.value.status_code == 403
    own = websocket.create_connection(ws_url, origin=monitor.url, timeout=10)
    assert json.loads(own.recv())["type"] == "snapshot"
    own.close()
    before = _rss(monitor.proc)

    # When clients send 300 frames of 1 MB (reconnecting whenever the monitor closes them)
    frame = "x" * 1_000_000
    closes = 0
    ws = websocket.create_connection(ws_url, timeout=10)
    for _ in range(300):
        try:
            ws.send(frame)
        except (websocket.WebSocketException, OSError):
            closes += 1
            ws.close()
            ws = websocket.create_connection(ws_url, timeout=10)
    ws.close()
    # Then the monitor closed those sockets, and its memory stayed within 20 MB
    assert closes >= 100, closes
    after = _rss(monitor.proc)
    assert after - before < 20 * 1024 * 1024, (before, after)

    # And a client that floods small frames is closed too (the stream takes no input)
    flood = websocket.create_connection(ws_url, timeout=10)
    assert json.loads(flood.recv())["type"] == "snapshot"

    def closed() -> bool:
        try:
            flood.send("hi")
            flood.settimeout(0.05)
            flood.recv()
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketException, OSError):
            return True
        return False

    wait_for(closed, 30, interval=0.01, what="the flooding client to be closed")
    flood.close()

    # And the limit is a few KB: a 4,000-byte message is read (the socket still answers a
    # ping after it), one of 4,097 bytes closes the socket with 1009 (message too big)
    def first_control_frame(sock: Any) -> tuple[int, bytes]:
        # Raw frames: recv_data would answer a close frame, and the server may have closed the
        # TCP connection right after sending it (a broken pipe on our side, not a failure).
        while True:
            frame = sock.recv_frame()
            if frame.opcode in (websocket.ABNF.OPCODE_PONG, websocket.ABNF.OPCODE_CLOSE):
                return frame.opcode, frame.data

    for size, expected in ((4000, websocket.ABNF.OPCODE_PONG), (4097, websocket.ABNF.OPCODE_CLOSE)):
        probe = websocket.create_connection(ws_url, timeout=10)
        assert json.loads(probe.recv())["type"] == "snapshot"
        probe.send("x" * size)
        try:
            probe.ping("still there?")
        except (BrokenPipeError, ConnectionResetError):
            # closed already (the oversized case): its close frame is still read below
            assert expected == websocket.ABNF.OPCODE_CLOSE, size
        opcode, data = first_control_frame(probe)
        assert opcode == expected, (size, opcode, data)
        if expected == websocket.ABNF.OPCODE_CLOSE:
            assert int.from_bytes(data[:2], "big") == 1009
        probe.close()
    assert monitor.health()["ok"]


# -- poison messages ------------------------------------------------------------------------


def test_poison_items_leave_the_worker_alive_and_the_monitor_counts_them(app, start_worker, start_monitor,
                                                                         redis_client, browser_context):
    # Given a worker and a monitor
    worker = start_worker("gpu0")
    monitor = start_monitor()
    # And a job the monitor knows as queued, whose message will turn out to be undecodable
    parked = submit_job("simulation", quick("never runs"), queue="parked-hostile", app=app)
    wait_for(lambda: _job_status(monitor, parked.id) == "queued", 30, what="the monitor to see the parked job")
    raw = wait_for(lambda: next((redis_client.rpop(k) for k in redis_client.keys("parked-hostile*")), None), 10,
                   what="the parked message")
    envelope = json.loads(raw)
    envelope["content-type"] = "application/x-python-serialize"
    envelope["properties"]["delivery_info"]["routing_key"] = "simulation"

    # When garbage, a bad base64 body, an envelope without delivery info and that pickle
    # message land on the worker's queue
    info = {"exchange": "", "routing_key": "simulation"}
    redis_client.lpush("simulation", b"garbage")
    redis_client.lpush("simulation", json.dumps({"body": "abc", "properties": {
        "delivery_tag": "x", "body_encoding": "base64", "delivery_info": info}}))
    redis_client.lpush("simulation", json.dumps({"body": "@@@", "properties": {"delivery_tag": "y",
                                                                             "body_encoding": "base64"}}))
    redis_client.lpush("simulation", json.dumps(envelope))

    # Then all four are in simulation.dead, and the monitor counts them
    def dead_total() -> int:
        body = strict_json(monitor.get("/api/dead-letters").text)
        return int(body["total"])

    wait_for(lambda: dead_total() == 4, 30, what="four dead letters on the monitor")
    listed = strict_json(monitor.get("/api/dead-letters").text)["queues"]
    assert [q["queue"] for q in listed] == ["simulation"]
    assert {i["job_id"] for i in listed[0]["items"]} == {None, parked.id}
    # And the discarded job ends failed with the reason, on the monitor too
    wait_for(lambda: _job_status(monitor, parked.id) == "failed", 30, what="the discarded job to fail")
    error = monitor.get(f"/api/jobs/{parked.id}").json()["error"]
    assert error["type"] == "MessageDiscarded" and "ContentDisallowed" in error["message"], error
    # And the worker is alive, never lost its broker connection, and the next job completes
    assert worker.proc.poll() is None
    assert "Connection to broker lost" not in worker.log_text()
    assert submit_job("simulation", quick("next"), app=app).wait(timeout=30)["output"] == "next"
    # And the fleet page shows the count
    page = browser_context().new_page()
    page.goto(monitor.url + "/")
    page.wait_for_selector('[data-dead-letters="4"]')


# -- numbers --------------------------------------------------------------------------------


def _forge(app: Any, worker: str) -> None:
    """Forged events with extreme numbers, sent like any worker's events."""
    with app.events.default_dispatcher(hostname=worker) as dispatcher:
        # (timestamps of now: the monitor refuses events dated far from their receipt)
        for event in seed_events(time.time() - 10, worker=worker):
            fields = {k: v for k, v in event.items() if k not in ("type", "hostname")}
            dispatcher.send(event["type"], **fields)
        for job in ("f1", "f2"):
            dispatcher.send("task-sent", uuid=job, kwargs=json.dumps({"service": "simulation"}))
            dispatcher.send("task-started", uuid=job)
            dispatcher.send("task-succeeded", uuid=job, runtime=HUGE)
        dispatcher.send("task-sent", uuid="f3", kwargs=json.dumps({"service": "simulation"}))
        dispatcher.send("task-progress", uuid="f3", percent=50.0, step=1, total_steps=2, eta_seconds=float("inf"))
        # A success dated 1e18 is refused (f5 stays queued); f4, sent after it, is taken
        dispatcher.send("task-sent", uuid="f5", kwargs=json.dumps({"service": "simulation"}))
        dispatcher.send("task-succeeded", uuid="f5", runtime=1.0, timestamp=FUTURE)
        dispatcher.send("task-sent", uuid="f4", kwargs=json.dumps({"service": "simulation"}))
        dispatcher.send("task-succeeded", uuid="f4", runtime=1.0)


def test_forged_extreme_numbers_leave_every_endpoint_at_200_and_every_page_rendering(app, start_monitor, tmp_path,
                                                                                    browser_context):
    # Given a monitor fed forged events with extreme numbers, and the same numbers planted in
    # its store past any validation
    monitor = start_monitor(db_name="hostile.db")
    _forge(app, "gpu0@vm1")
    wait_for(lambda: _job_status(monitor, "h4") == "queued" and _job_status(monitor, "f4") == "completed", 30,
             what="the monitor to take the forged events")
    assert _job_status(monitor, "f5") == "queued"  # its success dated 1e18 was refused
    plant(f"sqlite:///{tmp_path / 'hostile.db'}")

    # When every endpoint is read, then each answers 200 with strict JSON
    for path in ("/api/state", "/api/jobs", "/api/jobs?state=processing", "/api/jobs/h3", "/api/jobs/h2",
                 "/api/stats", "/api/workers", "/api/machines", "/api/queues", "/api/dead-letters", "/healthz",
                 "/api/openapi.json", "/api/auth"):
        res = monitor.get(path)
        assert res.status_code == 200, (path, res.status_code, res.text[:300])
        strict_json(res.text)
    assert monitor.get("/metrics").status_code == 200
    stats = strict_json(monitor.get("/api/stats").text)["services"]["simulation"]
    # (runtimes 1.0 and four times 1e308: finite statistics, no overflow)
    assert stats["mean"] == pytest.approx(4 * (HUGE / 5)) and stats["median"] == HUGE and stats["max"] == HUGE, stats
    # And the websocket snapshot is strict JSON too
    ws = websocket.create_connection(f"ws://127.0.0.1:{monitor.port}/ws", timeout=10)
    snapshot = strict_json(ws.recv())
    ws.close()
    assert {j["id"] for j in snapshot["state"]["jobs"]} >= {"h1", "h2", "h3", "h4"}

    # And every page renders under its CSP, with no script error and no CSP violation
    for path, ready in PAGES.items():
        context = browser_context()
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc, problems=problems: problems.append(str(exc)))
        page.on("console", lambda msg, problems=problems: problems.append(msg.text)
                if msg.type == "error" and not str(msg.location.get("url", "")).endswith("/favicon.ico") else None)
        page.goto(monitor.url + path)
        page.wait_for_selector("#conn.conn-live", timeout=30_000)
        page.wait_for_selector(ready, timeout=30_000)
        assert problems == [], (path, problems)
        context.close()

    # And hostile numbers in requests are refused with 400, never stored nor a 500
    for body in ('{"service": "simulation", "payload": {}, "timeout": NaN}',
                 '{"service": "simulation", "payload": {}, "priority": Infinity}',
                 "[" * 50_000 + "]" * 50_000):
        res = requests.post(f"{monitor.url}/api/jobs", data=body, headers={"Content-Type": "application/json"},
                            timeout=30)
        assert res.status_code == 400, (body[:60], res.status_code, res.text[:200])
        strict_json(res.text)
    big = requests.post(f"{monitor.url}/api/jobs", data=b"{" + b" " * 2_000_000 + b"}",
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413


# -- files ----------------------------------------------------------------------------------


def test_the_file_route_serves_only_regular_files_of_known_jobs_and_404s_every_trick(app, start_monitor, settings):
    # Given a job the monitor knows, with an output, a symlink to a secret and a folder in its
    # output directory, and files at the output root
    monitor = start_monitor()
    job = submit_job("simulation", quick("x"), queue="parked-files", app=app)
    wait_for(lambda: _job_status(monitor, job.id), 30, what="the monitor to know the job")
    root = Path(settings.output_dir)
    folder = root / job.id
    folder.mkdir(parents=True)
    (folder / "out.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "root.png").write_bytes(b"\x89PNG\r\n\x1a\nroot")
    secret = root.parent / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, folder / "link.png")
    (folder / "sub").mkdir()
    (root / "unknown-job").mkdir()
    (root / "unknown-job" / "out.png").write_bytes(b"\x89PNG")
    # Then the real output is served
    assert monitor.get(f"/jobs/{job.id}/files/out.png").status_code == 200
    # And every trick answers 404, with no path of this host in the answer
    for path in ("/jobs/./files/root.png", "/jobs/%2e/files/root.png", "/jobs/%2E/files/root.png",
                 f"/jobs/{job.id}/files/link.png", f"/jobs/{job.id}/files/sub", f"/jobs/{job.id}/files/" + "a" * 256,
                 f"/jobs/{job.id}/files/..%2Fsecret.txt", f"/jobs/{job.id}/files/.", "/jobs/unknown-job/files/out.png",
                 f"/jobs/{job.id}/files/%00.png", "/jobs/..%2F..%2F/files/secret.txt"):
        res = monitor.get(path)
        assert res.status_code == 404, (path, res.status_code)
        assert str(root) not in res.text and "Error" not in res.text.split("<title>")[0], path


# -- headers, modes, login ------------------------------------------------------------------


def test_every_page_sends_security_headers_and_no_template_has_inline_script(start_monitor):
    # Given a monitor
    monitor = start_monitor()
    # When its pages and API are fetched, then each carries the security headers
    for path in (*PAGES, "/api/state", "/healthz", "/ui-static/js/common.js"):
        headers = monitor.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"], path
    # And no template carries an inline script (only JSON data blocks)
    templates = Path(__file__).resolve().parents[3] / "monitor" / "templates"
    for template in templates.glob("*.html"):
        for tag in template.read_text().split("<script")[1:]:
            opening = tag.split(">", 1)[0]
            assert "src=" in opening or 'type="application/json"' in opening, (template.name, opening)
    # And the server is a production one
    assert monitor.get("/healthz").headers.get("Server", "").startswith("gunicorn")


def test_in_read_only_mode_the_client_page_offers_no_submit(start_monitor, browser_context):
    # Given a read-only monitor
    monitor = start_monitor(MONITOR_READ_ONLY="1")
    # When the client page opens, then its Submit button is disabled
    page = browser_context().new_page()
    page.goto(monitor.url + "/client")
    page.wait_for_selector("#auth-state:has-text('read-only')")
    assert page.is_disabled("#submit")


def test_a_login_link_logs_the_page_in_and_leaves_the_address_bar(start_monitor, browser_context):
    # Given a monitor with a token, and a login link such as `jobqueue up` prints
    token = uuid.uuid4().hex
    monitor = start_monitor(MONITOR_TOKEN=token)
    page = browser_context().new_page()
    # When the link is opened
    page.goto(f"{monitor.url}/#token={token}")
    # Then the page is logged in and the token is gone from the address bar
    page.wait_for_selector("#auth-state:has-text('logged in')")
    assert "token" not in page.url


@pytest.mark.parametrize("no_auth", [False, True])
def test_jobqueue_up_protects_the_controls_with_a_printed_login_url_unless_told_no_auth(tmp_path, machine_id,
                                                                                       redis_url, no_auth):
    import re

    from tests.jobqueue.up_process import UpProcess, up_env

    # Given `jobqueue up` on the test's Redis (without the simulator), with or without --no-auth
    env = up_env(tmp_path, machine_id, redis_url)
    args = ["--no-comfyui-sim", *(["--no-auth"] if no_auth else [])]
    up = UpProcess(env, tmp_path / "up.log", *args)
    try:
        up.wait_up()
        base = f"http://127.0.0.1:{env['JOBQUEUE_MONITOR_PORT']}"
        cancel = f"{base}/api/jobs/nope/cancel"
        found = re.search(re.escape(base) + r"/#token=([A-Za-z0-9_-]+)", up.output())
        if no_auth:
            # Then no token is printed, and a local script may act without one
            assert found is None, up.output()
            assert requests.post(cancel, json={}, timeout=10).status_code == 404
            return
        # Then the summary prints a login URL, and its token (only it) unlocks the controls
        assert found is not None, up.output()
        assert requests.post(cancel, json={}, timeout=10).status_code == 401
        assert requests.post(cancel, json={}, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        ok = requests.post(cancel, json={}, headers={"Authorization": f"Bearer {found.group(1)}"}, timeout=10)
        assert ok.status_code == 404, ok.text  # past the auth check: the job is unknown
    finally:
        up.cleanup()
