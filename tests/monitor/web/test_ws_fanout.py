"""Many dashboards on one real monitor (gunicorn, as users run it): their websockets hold no
thread of the web server, the API answers while they are open, each of them gets every change,
and the socket limits close what is over them with 1013."""

from __future__ import annotations

import json
import selectors
import socket
import time
from typing import Any

import psutil
import redis
import requests
import websocket

from bench import fleet_events
from jobqueue.client.jobs import submit_job
from tests.helpers import wait_for

QUICK = {"steps": 2, "step_seconds": 0.05, "output": "ok"}


class Dashboards:
    """``count`` websocket clients of ``url``, read together from one thread with a selector:
    each keeps the seqs and the job statuses it was sent."""

    def __init__(self, url: str, count: int, source: str | None = None) -> None:
        self.sockets = [connect(url, source) for _ in range(count)]
        self.seqs: list[list[int]] = [[] for _ in self.sockets]
        self.jobs: list[dict[str, str]] = [{} for _ in self.sockets]
        self.selector = selectors.DefaultSelector()
        for index, ws in enumerate(self.sockets):
            self.selector.register(ws.sock, selectors.EVENT_READ, index)

    def read(self, timeout: float = 0.2) -> None:
        """Read every frame that arrives within ``timeout``."""
        for key, _ in self.selector.select(timeout):
            index = key.data
            message = json.loads(self.sockets[index].recv())
            self.seqs[index].append(message["seq"])
            if message["type"] == "snapshot":
                self.jobs[index] = {j["id"]: j["status"] for j in message["state"]["jobs"]}
            elif message["kind"] == "job" and message["data"] is not None:
                self.jobs[index][message["id"]] = message["data"]["status"]

    def close(self) -> None:
        self.selector.close()
        for ws in self.sockets:
            ws.close()


def connect(url: str, source: str | None = None) -> Any:
    """A websocket client of ``url``, from the local address ``source`` when given."""
    if source is None:
        return websocket.create_connection(url, timeout=10)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    sock.connect((host, int(port)))
    return websocket.create_connection(url, timeout=10, socket=sock)


def serving_threads(monitor: Any) -> int:
    """Threads of the monitor's gunicorn worker (the master's child that serves)."""
    master = psutil.Process(monitor.proc.pid)
    children = master.children(recursive=True)
    return max(child.num_threads() for child in children)


def close_frame(ws: Any) -> tuple[int, str]:
    """The code and reason of the closing frame ``ws`` is sent next (other frames skipped)."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def test_a_hundred_open_dashboards_hold_no_thread_and_each_sees_a_job_complete_while_the_api_answers(
        app, start_worker, start_monitor):
    # Given a monitor whose web server has 4 threads, and a worker
    monitor = start_monitor("m.db", MONITOR_THREADS="4")
    start_worker("gpu0")
    # When 100 dashboards open /ws
    dashboards = Dashboards(monitor.url.replace("http", "ws") + "/ws", 100)
    try:
        wait_for(lambda: dashboards.read() or all(dashboards.seqs), 20, interval=0, what="100 snapshots")
        # Then the API still answers, again and again, with all of them open
        for _ in range(20):
            assert requests.get(monitor.url + "/api/state", timeout=5).status_code == 200
        # And they hold no thread: the serving process has far fewer threads than sockets
        assert serving_threads(monitor) < 50, serving_threads(monitor)
        # When a job runs to completion
        handle = submit_job("simulation", QUICK, app=app)
        handle.wait(timeout=30)
        # Then every dashboard is sent its completion, each in seq order without a gap
        wait_for(lambda: dashboards.read() or all(j.get(handle.id) == "completed" for j in dashboards.jobs), 20,
                 interval=0, what="the completion on all 100 dashboards")
        for seqs in dashboards.seqs:
            assert seqs[1:] == list(range(seqs[0] + 1, seqs[0] + len(seqs))), seqs
    finally:
        dashboards.close()


def test_sockets_over_the_per_address_and_the_total_limit_are_closed_with_1013(start_monitor):
    # Given a monitor that allows 3 websockets per address and 5 in all
    monitor = start_monitor("m.db", MONITOR_WS_MAX_PER_ADDRESS="3", MONITOR_WS_MAX_SOCKETS="5")
    url = monitor.url.replace("http", "ws") + "/ws"
    first = [connect(url) for _ in range(3)]
    for ws in first:
        assert json.loads(ws.recv())["type"] == "snapshot"
    # When a fourth opens from the same address, then it is closed with 1013 and told why
    fourth = connect(url)
    code, reason = close_frame(fourth)
    assert code == 1013 and "too many websockets from 127.0.0.1" in reason, (code, reason)
    # When two more open from another address, and then one more from a third
    others = [connect(url, "127.0.0.2") for _ in range(2)]
    for ws in others:
        assert json.loads(ws.recv())["type"] == "snapshot"
    sixth = connect(url, "127.0.0.3")
    # Then the total limit closes it with 1013
    code, reason = close_frame(sixth)
    assert code == 1013 and "most open websockets (5)" in reason, (code, reason)
    # And the API answers all along
    assert requests.get(monitor.url + "/api/state", timeout=5).status_code == 200
    # When one of the first three closes, then its address may open one again
    first.pop().close()

    def admitted() -> bool:
        ws = connect(url)
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_TEXT and json.loads(data)["type"] == "snapshot":
            first.append(ws)
            return True
        ws.close()
        return False

    wait_for(admitted, 10, interval=0.1, what="a slot freed by a closed socket")
    for ws in first + others + [fourth, sixth]:
        ws.close()


def test_a_stopping_monitor_closes_its_websockets_with_1001(start_monitor):
    # Given a dashboard on a monitor
    monitor = start_monitor("m.db")
    ws = connect(monitor.url.replace("http", "ws") + "/ws")
    assert json.loads(ws.recv())["type"] == "snapshot"
    # When the monitor stops (SIGTERM), then the socket is closed as "going away"
    monitor.stop()
    code, _reason = close_frame(ws)
    assert code == 1001
    ws.close()


def test_dashboards_opening_together_share_one_snapshot():
    # Given a snapshot that takes a while to make
    import threading

    from monitor.web.ws import SharedSnapshot

    made: list[int] = []
    release = threading.Event()

    def make() -> tuple[int, bytes]:
        made.append(1)
        release.wait(5)
        return 42, b"frame"

    shared = SharedSnapshot(make)
    shared.SHARE_SECONDS = 60.0  # a thread that starts late still counts as "together"
    # When eight dashboards ask for one while it is being made
    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(shared.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: made, 5, what="the first snapshot to start")
    release.set()
    for thread in threads:
        thread.join(5)
    # Then it was made once and every one of them got it, and so does one asking right after
    assert made == [1] and results == [(42, b"frame")] * 8
    assert shared.get() == (42, b"frame") and made == [1]


def test_a_dashboard_that_stops_reading_is_paused_and_then_gets_every_change_in_order(start_monitor, redis_url):
    # Given a dashboard with a small receive buffer that reads its snapshot, then nothing
    monitor = start_monitor("m.db")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", monitor.port))
    ws = websocket.create_connection(monitor.url.replace("http", "ws") + "/ws", timeout=10, socket=sock)
    seqs = [json.loads(ws.recv())["seq"]]
    # When far more changes happen than its socket and the monitor's queue for it hold: four
    # rounds of 200 connector reports of ~18 KB each (each round applied before the next)
    client = redis.Redis.from_url(redis_url)
    db = int(redis_url.rsplit("/", 1)[1])
    fleet_events.announce(client, db, 200, 60.0)
    service = fleet_events.SERVICES[199 % len(fleet_events.SERVICES)]  # the watched worker's
    for round_ in range(4):
        reports = [fleet_events.connector_status(n, time.time(), seq=round_ + 2) for n in range(200)]
        for report in reports:
            report["details"]["notes"] = f"round {round_} " + "x" * 18_000
        fleet_events.publish(client, db, reports)

        def applied(round_: int = round_) -> bool:
            workers = {w["name"]: w for w in monitor.state()["workers"]}
            worker = workers.get(fleet_events.worker_name(199))
            details = (worker["connectors"].get(service) or {}).get("details", {}) if worker else {}
            return str(details.get("notes", "")).startswith(f"round {round_} ")

        wait_for(applied, 60, interval=0.3, what=f"round {round_} applied")
    # Then, reading again, it gets every change after its snapshot, in order, without a gap
    received, target = 0, monitor.state()["seq"]
    while seqs[-1] < target:
        raw = ws.recv()
        received += len(raw)
        message = json.loads(raw)
        assert message["type"] == "delta", message["type"]
        seqs.append(message["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # And it was sent more than both sockets' buffers (32 KB here, at most 4 MB at the monitor)
    # and its 256 KB queue hold: it had been paused on the way
    assert received > 6 * 1024 * 1024, received
    ws.close()
    client.close()


def test_the_ring_hands_out_what_follows_a_cursor_and_says_when_it_no_longer_reaches_back():
    from monitor.web.fanout import Ring

    # Given a ring of 100 bytes holding batches of 40-byte frames after seq 10
    ring = Ring(10, max_bytes=100)
    ring.add([(11, b"a" * 40)])
    ring.add([(12, b"b" * 40), (13, b"c" * 40)])
    # Then a cursor inside it gets exactly the frames after it, and the head's cursor nothing
    assert ring.after(11) == (b"b" * 40 + b"c" * 40, 13)
    assert ring.after(13) == (b"", 13)
    # When it grows past its size, then its oldest batch goes and a cursor before it is refused
    ring.add([(14, b"d" * 40)])
    assert ring.base == 13 and ring.head == 14
    assert ring.after(11) is None
    assert ring.after(13) == (b"d" * 40, 14)


def test_the_socket_limits_count_per_address_and_in_total_and_free_a_slot_on_release():
    from monitor.web.fanout import Limits

    limits = Limits(total=3, per_address=2)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert "too many websockets from a" in (limits.admit("a") or "")
    assert limits.admit("b") is None
    assert "most open websockets (3)" in (limits.admit("c") or "")
    limits.release("a")
    assert limits.admit("c") is None and limits.count == 3


def test_a_tenants_client_gets_its_own_jobs_the_fleet_redacted_and_a_hidden_place_for_the_rest():
    from monitor.web.fanout import Ring, delta_frames, joined

    # Given changes of acme's job, globex's job, a job of no tenant, a worker running globex's
    # job, a service median and the pruning of an acme job
    worker = {"name": "gpu0@vm1", "current_job": "g1", "processed": 9, "failed": 1, "celery_processed": 12}
    changes = [
        {"seq": 1, "kind": "job", "id": "a1", "data": {"id": "a1", "tenant": "acme"}, "tenant": "acme"},
        {"seq": 2, "kind": "job", "id": "g1", "data": {"id": "g1", "tenant": "globex"}, "tenant": "globex"},
        {"seq": 3, "kind": "job", "id": "n1", "data": {"id": "n1", "tenant": None}, "tenant": None},
        {"seq": 4, "kind": "worker", "id": "gpu0@vm1", "data": worker, "tenant": None},
        {"seq": 5, "kind": "service", "id": "simulation", "data": {"median": 1.0}, "tenant": None},
        {"seq": 6, "kind": "job", "id": "a0", "data": None, "tenant": "acme"},
    ]
    frames = delta_frames(changes)

    def read(data: bytes) -> list[dict[str, Any]]:
        out, rest = [], data
        while rest:  # unmasked server text frames: 0x81, a length (126: two more bytes), the text
            size, start = rest[1], 2
            if size == 126:
                size, start = int.from_bytes(rest[2:4], "big"), 4
            out.append(json.loads(rest[start:start + size]))
            rest = rest[start + size:]
        return out

    # Then acme's client gets its jobs (and their pruning), the worker without its job and
    # counts, the median, and for globex's and the tenant-less job only their seq
    mine = read(joined(frames, "acme"))
    assert [m["seq"] for m in mine] == [1, 2, 3, 4, 5, 6]
    assert [(m["kind"], m["id"]) for m in mine] == [("job", "a1"), ("hidden", None), ("hidden", None),
                                                   ("worker", "gpu0@vm1"), ("service", "simulation"), ("job", "a0")]
    assert mine[3]["data"]["name"] == "gpu0@vm1" and all(
        mine[3]["data"][k] is None for k in ("current_job", "processed", "failed", "celery_processed"))
    assert "g1" not in json.dumps(mine) and "n1" not in json.dumps(mine)
    # And a client that sees all gets every change as it is, without the tenant column
    everything = read(joined(frames, None))
    assert [m["id"] for m in everything] == ["a1", "g1", "n1", "gpu0@vm1", "simulation", "a0"]
    assert everything[3]["data"] == worker and all("tenant" not in m for m in everything)
    # And the ring hands a tenant's client the same as the live batch
    ring = Ring(0)
    ring.add(frames)
    assert ring.after(0, tenant="acme") == (joined(frames, "acme"), 6)
