"""Acceptance: malformed events on the real stream, and websocket clients.

10,000 malformed events pushed into the event stream leave the collector running, counted and
the state unharmed; a websocket client connected throughout and one that connects at the end
hold the same state.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import uuid
from typing import Any

import redis
import websocket

from jobqueue.client.jobs import submit_job
from tests.helpers import wait_for
from tests.monitor.conftest import comparable

QUICK = {"steps": 3, "step_seconds": 0.1, "output": "ok"}


def envelope(body: bytes, routing_key: str) -> bytes:
    """A kombu message as the Redis transport publishes it (see FACTS.md)."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "fuzzer@nowhere"},
        "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }).encode()


def malformed(i: int) -> tuple[bytes, str]:
    """The i-th malformed event body and its routing key: wrong types, missing fields,
    unknown names, huge strings, undecodable bodies."""
    kind = i % 10
    if kind == 0:
        return b"{not json", "task.started"
    if kind == 1:
        return json.dumps({"uuid": f"no-type-{i}", "timestamp": 1.0}).encode(), "task.started"
    if kind == 2:
        return json.dumps({"type": f"task-bogus-{i}", "uuid": "x", "timestamp": 1.0}).encode(), "task.bogus"
    if kind == 3:
        return json.dumps({"type": "task-started", "uuid": i, "timestamp": 1.0, "hostname": "w"}).encode(), "task.started"
    if kind == 4:
        return json.dumps({"type": "task-progress", "uuid": f"p{i}", "timestamp": 1.0, "percent": "half"}).encode(), "task.progress"
    if kind == 5:
        size = 200_000 if i % 1000 == 5 else 5_000
        return json.dumps({"type": "task-succeeded", "uuid": "u" * size, "timestamp": 1.0}).encode(), "task.succeeded"
    if kind == 6:
        return json.dumps({"type": "worker-heartbeat", "hostname": ["a", "b"], "timestamp": 1.0}).encode(), "worker.heartbeat"
    if kind == 7:
        return json.dumps({"type": "connector-status", "worker": "w@x", "service": "simulation",
                           "status": "on fire", "timestamp": 1.0}).encode(), "connector.status"
    if kind == 8:
        return json.dumps([42]).encode(), "task.started"  # a batch holding one non-event
    return json.dumps({"type": "task-failed", "uuid": f"f{i}", "timestamp": "tuesday",
                       "exception": "X()"}).encode(), "task.failed"


def _malformed_count(monitor) -> int:
    return int(monitor.health()["collector"]["malformed"])


def test_10000_malformed_events_are_counted_and_change_nothing(app, redis_url, start_worker, start_monitor):
    # Given a monitor that shows a worker and finished jobs
    monitor = start_monitor("m.db")
    start_worker("gpu0")
    for handle in [submit_job("simulation", QUICK, app=app) for _ in range(2)]:
        handle.wait(timeout=30)
    wait_for(lambda: sum(j["status"] == "completed" for j in monitor.state()["jobs"]) == 2, 10)
    before = comparable(monitor.state())
    # When 10,000 malformed events are published onto the event stream
    client = redis.Redis.from_url(redis_url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    total = 10_000
    for start in range(0, total, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 1000):
            body, key = malformed(i)
            pipe.publish(f"/{db}.celeryev/{key}", envelope(body, key))
        pipe.execute()
        # pace the publisher so the test measures robustness, not Redis' pub/sub buffer
        wait_for(lambda s=start: _malformed_count(monitor) >= s + 1000 - 10, 20, interval=0.05)
    # Then every one is counted as malformed and the collector keeps running
    wait_for(lambda: _malformed_count(monitor) >= total, 20, what="all malformed events counted")
    health = monitor.health()
    assert health["ok"] is True and health["collector"]["alive"] is True
    assert _malformed_count(monitor) == total
    # And the state is unharmed
    assert comparable(monitor.state())["jobs"] == before["jobs"]
    assert comparable(monitor.state())["machines"] == before["machines"]
    # And real events still get through
    after = submit_job("simulation", QUICK, app=app)
    after.wait(timeout=30)
    wait_for(lambda: any(j["id"] == after.id and j["status"] == "completed" for j in monitor.state()["jobs"]), 10)
    client.close()


def medians(state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each service's completion-time median and sample count."""
    return {x["service"]: (x["median"], x["samples"]) for x in state["services"]}


class WsClient:
    """A websocket client that keeps the state up to date from snapshot + deltas."""

    def __init__(self, url: str, start_from: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = copy.deepcopy(start_from or {})
        self.first_snapshot: dict[str, Any] | None = None
        self.seqs: list[int] = [self.state["seq"]] if start_from else []
        self.ws = websocket.create_connection(url, timeout=10)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:
                return
            if not raw:
                return
            message = json.loads(raw)
            if message["type"] == "snapshot":
                s = message["state"]
                self.state = {"seq": message["seq"],
                              "machine": {m["id"]: m for m in s["machines"]},
                              "worker": {w["name"]: w for w in s["workers"]},
                              "job": {j["id"]: j for j in s["jobs"]},
                              "service": {x["service"]: x for x in s["services"]}}
                self.seqs.append(message["seq"])
                if self.first_snapshot is None:
                    self.first_snapshot = copy.deepcopy(self.state)
                continue
            if self.seqs and message["seq"] != self.seqs[-1] + 1:
                self.errors.append(f"gap or duplicate: {self.seqs[-1]} -> {message['seq']}")
            self.seqs.append(message["seq"])
            self.state["seq"] = message["seq"]
            objects = self.state[message["kind"]]
            if message["data"] is None:
                objects.pop(message["id"], None)
            else:
                objects[message["id"]] = message["data"]

    def as_state(self) -> dict[str, Any]:
        return {"machines": list(self.state["machine"].values()), "workers": list(self.state["worker"].values()),
                "jobs": list(self.state["job"].values()), "services": list(self.state["service"].values())}

    def close(self) -> None:
        self._stop.set()
        self.ws.close()


def test_a_websocket_client_connected_throughout_and_one_connecting_at_the_end_hold_the_same_state(
        app, start_worker, start_monitor):
    # Given a websocket client connected before anything happens
    monitor = start_monitor("m.db")
    ws_url = monitor.url.replace("http", "ws") + "/ws"
    early = WsClient(ws_url)
    wait_for(lambda: early.seqs, 10, what="the first snapshot")
    # When a worker starts and runs jobs
    start_worker("gpu0")
    handles = [submit_job("simulation", QUICK, app=app) for _ in range(4)]
    for handle in handles:
        handle.wait(timeout=30)
    # And a second client connects at the end, and a third reconnects with ?since=
    late = WsClient(ws_url)
    wait_for(lambda: late.seqs, 10, what="the late snapshot")
    assert early.first_snapshot is not None
    resumed = WsClient(ws_url + f"?since={early.seqs[0]}", start_from=early.first_snapshot)
    try:
        # Then all hold the same state, the same as the REST snapshot, with no gap or duplicate
        def same() -> bool:
            if not (early.state and late.state and resumed.state):
                return False
            rest = monitor.state()
            return early.state["seq"] == late.state["seq"] == resumed.state["seq"] == rest["seq"] and \
                comparable(early.as_state()) == comparable(late.as_state()) == comparable(resumed.as_state()) \
                == comparable(rest) and \
                medians(early.as_state()) == medians(late.as_state()) == medians(resumed.as_state()) == medians(rest)

        wait_for(same, 15, interval=0.2, what="equal websocket states")
        assert early.errors == [] and late.errors == [] and resumed.errors == []
        assert resumed.seqs[1] == early.seqs[0] + 1  # only deltas, starting right after `since`
        assert {j["id"] for j in early.as_state()["jobs"]} >= {h.id for h in handles}
        # And the service median queued-job ETAs are computed from arrived by deltas too
        assert medians(early.as_state())["simulation"][0] is not None
    finally:
        early.close()
        late.close()
        resumed.close()
