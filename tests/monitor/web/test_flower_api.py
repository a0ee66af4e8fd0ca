"""Flower's REST API, served by the monitor under ``/flower``, against a real Flower (PyPI
``flower`` 2.x) on the same broker, watching the same plain Celery app's real worker: every
read endpoint answers the same JSON for the same tasks and workers (issue 28, point 4).

Known differences, compared apart (docs/flower.md): ``clock`` (the Lamport clock of a task's
last event, which the monitor does not keep) is ``null`` here; ``children`` is a set in Flower
(a ``WeakSet``) and compared as one; worker ``stats`` change between two asks (uptime, rusage),
so their stable parts are compared; ``timestamp`` of a worker's inspect answer is when each
asked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import wait_for
from tests.monitor import browser
from tests.monitor.plain_app import plain_worker_process

start_monitor = browser.start_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODE = "plain@box-f"
ADMIN = {"Authorization": f"Bearer {browser.TOKEN}"}
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def flower(tmp_path: Path, redis_url: str) -> Iterator[str]:
    """Flower started the usual way (``celery --broker --result-backend flower``); its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBQUEUE_", "CELERY_", "FLOWER_"))}
    env["FLOWER_UNAUTHENTICATED_API"] = "true"
    home = tmp_path / "flower"
    home.mkdir()
    log = (home / "flower.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "--broker", redis_url, "--result-backend", redis_url,
                             "flower", "--address=127.0.0.1", f"--port={port}"], cwd=str(home), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ok(url + "/healthcheck"), 30, interval=0.2, what="Flower answering")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def worker(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    with plain_worker_process(tmp_path, redis_url, node=NODE) as app:
        yield app


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def get(base: str, path: str, **params: Any) -> Any:
    answer = requests.get(base + path, params=params, headers=ADMIN, timeout=20)
    assert answer.status_code == 200, f"{base}{path}: {answer.status_code} {answer.text[:300]}"
    return answer.json()


def run_tasks(app: Any) -> dict[str, str]:
    """The same tasks for both: a success, a failure, a chain of 2, args in a list, a countdown."""
    from celery import chain

    app.send_task("plain.add", args=(2, 3))  # warms the connection; compared like the rest
    chained = chain(app.signature("plain.add", args=(1, 2)), app.signature("plain.add", args=(10,))).apply_async()
    return {"add": app.send_task("plain.add", args=(2, 3)).id, "boom": app.send_task("plain.boom").id,
            "tsum": app.send_task("plain.tsum", args=([1, 2, 3],)).id,
            "later": app.send_task("plain.add", args=(4, 4), countdown=1).id,
            "chain_head": chained.parent.id, "chain_tail": chained.id}


def final_on_both(flower: str, monitor: Any, ids: dict[str, str]) -> bool:
    for base in (flower, monitor.url + "/flower"):
        for task_id in ids.values():
            answer = requests.get(f"{base}/api/task/info/{task_id}", headers=ADMIN, timeout=10)
            if answer.status_code != 200 or answer.json()["state"] not in FINAL:
                return False
    return True


def comparable(task: dict[str, Any]) -> dict[str, Any]:
    """A task dict without what differs by design (``clock``), ``children`` as a set."""
    out = {k: v for k, v in task.items() if k not in ("clock", "children")}
    out["children"] = sorted(task.get("children") or [])
    return out


def test_every_read_endpoint_answers_what_flower_answers_for_the_same_tasks_and_workers(start_monitor, flower,
                                                                                         worker):
    monitor = start_monitor()
    ours = monitor.url + "/flower"
    wait_for(lambda: NODE in get(flower, "/api/workers", refresh="true"), 30, interval=0.5, what="Flower's worker")
    wait_for(lambda: NODE in get(ours, "/api/workers"), 30, interval=0.5, what="our worker")
    ids = run_tasks(worker)
    wait_for(lambda: final_on_both(flower, monitor, ids), 60, interval=0.5, what="every task final on both")
    # Task info: field for field (Flower's keys, values as its state machine folds the events)
    for task_id in ids.values():
        theirs, mine = get(flower, f"/api/task/info/{task_id}"), get(ours, f"/api/task/info/{task_id}")
        assert list(mine) == list(theirs)
        assert mine["clock"] is None
        assert comparable(mine) == comparable(theirs), task_id
    # The task list, whole and filtered, in Flower's orders
    for params in ({}, {"limit": 3, "offset": 1}, {"sort_by": "name"}, {"sort_by": "-received"},
                   {"taskname": "plain.add"}, {"state": "FAILURE"}, {"workername": NODE}, {"state": "SUCCESS",
                                                                                         "limit": 2},
                   {"search": 'args:"10)"'}, {"search": "state:failure OR name:tsum"},
                   {"search": 'plain.add AND args:"(2, 3)"', "sort_by": "name"}, {"search": '"(2, 3)"'}):
        theirs, mine = get(flower, "/api/tasks", **params), get(ours, "/api/tasks", **params)
        assert list(mine) == list(theirs), params
        assert [comparable(t) for t in mine.values()] == [comparable(t) for t in theirs.values()], params
        assert theirs or "search" not in params, f"{params} finds nothing on either side"
    # A search Flower refuses is refused with Flower's answer
    refused = [requests.get(base + "/api/tasks", params={"search": "NOT boom"}, headers=ADMIN, timeout=20)
               for base in (flower, ours)]
    assert [(r.status_code, r.json()) for r in refused] == [(400, {"error": "NOT is not supported at position 0."})] * 2
    # Task types, results, queue lengths, health
    assert get(ours, "/api/task/types") == get(flower, "/api/task/types")
    for name in ("add", "boom", "tsum"):
        assert get(ours, f"/api/task/result/{ids[name]}") == get(flower, f"/api/task/result/{ids[name]}")
    assert get(ours, "/api/queues/length") == get(flower, "/api/queues/length")
    assert requests.get(ours + "/healthcheck", timeout=5).text == requests.get(flower + "/healthcheck", timeout=5).text
    # Workers: the same inspect answers per worker (stats' stable parts), and the same status
    assert get(ours, "/api/workers", status="true") == get(flower, "/api/workers", status="true") == {NODE: True}
    for params in ({"refresh": "true"}, {"refresh": "true", "workername": NODE}):
        theirs, mine = get(flower, "/api/workers", **params)[NODE], get(ours, "/api/workers", **params)[NODE]
        assert sorted(mine) == sorted(theirs), params
        for key in ("registered", "active_queues", "conf", "active", "reserved", "scheduled", "revoked"):
            assert mine.get(key) == theirs.get(key), key
        assert sorted(mine["stats"]) == sorted(theirs["stats"])
        for key in ("pid", "pool", "broker", "prefetch_count"):
            stable = {k: v for k, v in mine["stats"][key].items() if k != "processes"} if key == "pool" else \
                mine["stats"][key]
            other = {k: v for k, v in theirs["stats"][key].items() if k != "processes"} if key == "pool" else \
                theirs["stats"][key]
            assert stable == other, key


def test_bad_input_gets_flowers_errors_and_clear_ones_where_flower_has_none(start_monitor, worker):
    monitor = start_monitor()
    ours = monitor.url + "/flower"
    wait_for(lambda: NODE in get(ours, "/api/workers"), 30, interval=0.5, what="our worker")

    def post(path: str, **kwargs: Any) -> Any:
        return requests.post(ours + path, headers=ADMIN, timeout=20, **kwargs)

    # An unknown task name on apply: 404 as in Flower (the monitor's app registers no plain task)
    assert (r := post("/api/task/apply/plain.nothing", json={"args": [1]})).status_code == 404
    assert r.text == "Unknown task 'plain.nothing'"
    assert post("/api/task/async-apply/plain.add", json={"args": [1, 2]}).status_code == 404
    # send-task publishes by name, and the worker runs it
    sent = post("/api/task/send-task/plain.add", json={"args": [20, 22]})
    assert sent.status_code == 200 and sent.json()["state"] in ("PENDING", "STARTED", "SUCCESS")
    task_id = sent.json()["task-id"]
    wait_for(lambda: get(ours, f"/api/task/result/{task_id}").get("result") == 42, 30, interval=0.3,
             what="the sent task's result")
    assert post("/api/task/send-task/plain.add", json={"args": "1,2"}).text == "args must be an array"
    # A body nested deeper than the JSON parser can follow, from a script as plain text: a 400
    deep = requests.post(ours + "/api/task/send-task/plain.add", data="[" * 5000, timeout=20,
                         headers={**ADMIN, "Content-Type": "text/plain"})
    assert deep.status_code == 400 and deep.text == "JSON nested too deeply", deep.text
    # A result wait without end (Flower has no bound) is refused at once; a short one answers the state
    for endless in ("1e308", "inf", "nan", "61"):
        refused = requests.get(f"{ours}/api/task/result/never-sent", params={"timeout": endless}, headers=ADMIN,
                               timeout=20)
        assert refused.status_code == 400 and "at most 60 seconds" in refused.text, endless
    assert get(ours, "/api/task/result/never-sent", timeout="0.2") == {"task-id": "never-sent", "state": "PENDING"}
    # A revoke of an id nobody saw: 404 and nothing sent
    assert (r := post("/api/task/revoke/no-such-task", data={"terminate": "true"})).status_code == 404
    assert r.text == "Unknown task 'no-such-task'"
    assert post(f"/api/task/revoke/{task_id}", data={"signal": "SIGNOPE"}).status_code == 400
    assert post(f"/api/task/revoke/{task_id}", data={"terminate": "maybe"}).status_code == 400
    assert post(f"/api/task/revoke/{task_id}").json() == {"message": f"Revoked '{task_id}'"}
    # A pool shrink below one and an autoscale with min > max: 400 before anything is sent
    assert post(f"/api/worker/pool/shrink/{NODE}", data={"n": "-1"}).status_code == 400
    assert (r := post(f"/api/worker/pool/autoscale/{NODE}", data={"min": "5", "max": "2"})).status_code == 400
    assert "min=5, max=2" in r.text
    assert post(f"/api/worker/pool/autoscale/{NODE}", data={"max": "2"}).text == "Missing argument min"
    # A worker nobody knows: 404; a rate limit on it too
    assert post("/api/worker/pool/grow/nobody@nowhere").text == "Unknown worker 'nobody@nowhere'"
    assert post("/api/task/rate-limit/plain.add", data={"workername": "nobody@nowhere",
                                                        "ratelimit": "5/m"}).status_code == 404
    assert requests.get(ours + "/api/workers", params={"workername": "nobody@nowhere"}, timeout=10).status_code == 404
    # Bad list arguments
    assert requests.get(ours + "/api/tasks", params={"sort_by": "runtime"}, timeout=10).status_code == 400
    assert requests.get(ours + "/api/tasks", params={"received_start": "yesterday"}, timeout=10).status_code == 400


def test_controls_drive_a_real_worker_with_flowers_answers_and_roles(start_monitor, tmp_path, redis_url):
    with plain_worker_process(tmp_path, redis_url, pool="prefork", concurrency=1, node=NODE):
        monitor = start_monitor()
        ours = monitor.url + "/flower"
        keys = {role: requests.post(monitor.url + "/api/keys", json={"role": role}, headers=ADMIN,
                                    timeout=10).json()["key"] for role in ("viewer", "operator")}
        viewer, operator = ({"Authorization": f"Bearer {keys[r]}"} for r in ("viewer", "operator"))
        wait_for(lambda: NODE in get(ours, "/api/workers"), 30, interval=0.5, what="our worker")

        def post(path: str, headers: dict[str, str] = ADMIN, **data: str) -> Any:
            return requests.post(ours + path, data=data, headers=headers, timeout=20)

        def processes() -> int:
            stats = get(ours, "/api/workers", workername=NODE)[NODE]["stats"]
            return len(stats["pool"]["processes"])

        # Roles: a viewer may not revoke, an operator may not touch a pool but may add a consumer
        assert post("/api/task/revoke/x", viewer).status_code == 403
        assert post(f"/api/worker/pool/grow/{NODE}", operator).status_code == 403
        added = post(f"/api/worker/queue/add-consumer/{NODE}", operator, queue="extra")
        assert added.status_code == 200, added.text
        assert added.json() == {"message": "add consumer extra"}
        queues = lambda: [q["name"] for q in get(ours, "/api/workers", workername=NODE)[NODE]["active_queues"]]  # noqa: E731
        wait_for(lambda: "extra" in queues(), 15, interval=0.5, what="the added consumer")
        assert post(f"/api/worker/queue/cancel-consumer/{NODE}", operator, queue="extra").status_code == 200
        wait_for(lambda: "extra" not in queues(), 15, interval=0.5, what="the cancelled consumer")
        # Pool grow and shrink, with Flower's messages
        grown = post(f"/api/worker/pool/grow/{NODE}", n="1")
        assert grown.json() == {"message": f"Growing '{NODE}' worker's pool by 1"}
        wait_for(lambda: processes() == 2, 20, interval=0.5, what="two processes")
        assert post(f"/api/worker/pool/shrink/{NODE}", n="1").status_code == 200
        wait_for(lambda: processes() == 1, 20, interval=0.5, what="one process again")
        # Limits, answered with the worker's own words
        limited = post("/api/task/rate-limit/plain.add", workername=NODE, ratelimit="5/m")
        assert limited.status_code == 200 and "rate limit" in limited.json()["message"]
        timed = post("/api/task/timeout/plain.add", workername=NODE, soft="20", hard="30")
        assert timed.status_code == 200, timed.text
        assert "time limits" in timed.json()["message"]
        # Shut the worker down; a control to it afterwards gets a clear 504
        assert post(f"/api/worker/shutdown/{NODE}").json() == {"message": "Shutting down!"}
        wait_for(lambda: get(ours, "/api/workers", status="true").get(NODE) is False, 30, interval=0.5,
                 what="the worker offline")
        silent = post(f"/api/worker/pool/grow/{NODE}", n="1")
        assert silent.status_code == 504 and "did not answer" in silent.text
        # Every control is in the audit trail
        wanted = {"flower_consumer", "flower_pool", "flower_limits", "flower_shutdown"}
        wait_for(lambda: wanted <= {e["action"] for e in requests.get(
            monitor.url + "/api/audit?limit=50", headers=ADMIN, timeout=10).json()["entries"]}, 10,
            what="every control audited")  # the monitor's writer adds the entries: polled


def test_a_web_pages_form_post_to_a_flower_control_is_still_refused(start_monitor):
    monitor = start_monitor()
    url = f"{monitor.url}/flower/api/task/revoke/some-task"
    # A form from another site, and a form from a page of ours carrying no Authorization header
    evil = requests.post(url, data={"terminate": "true"}, headers={"Origin": "http://evil.example"}, timeout=10)
    page = requests.post(url, data={"terminate": "true"}, headers={"Origin": monitor.url}, timeout=10)
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "cross_site"
    assert page.status_code == 403 and page.json()["error"]["code"] == "json_required"
    # A script's form (its Authorization header) passes the door: the task is unknown, 404
    script = requests.post(url, data={"terminate": "true"}, headers=ADMIN, timeout=10)
    assert script.status_code == 404 and script.text == "Unknown task 'some-task'"
