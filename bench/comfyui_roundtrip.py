"""Round trip of a cached ComfyUI job: a direct ComfyUI client vs jobqueue, side by side.

All sides talk to the same ComfyUI, by default a simulator started for the run (a subprocess,
``python -m jobqueue.sims.comfyui``), with ``--comfyui-url`` a server already running (a real
ComfyUI), and run the same workflow (``EXAMPLE_WORKFLOW``, or the API-format JSON file given
with ``--workflow``), which ComfyUI has already run once, so every node is cached and the
prompt ends in milliseconds: what is measured is the protocol and the plumbing, not the work.

* **direct client**: what a minimal ComfyUI client does: a websocket open with its
  ``clientId`` (kept open between prompts), POST ``/prompt``, wait for ``executing`` with
  ``node: null`` for its prompt (not ``execution_success``: a real ComfyUI may still answer
  ``{}`` for the prompt's history then), GET ``/history/<id>``.
* **connector in-process**: :class:`jobqueue.connectors.comfyui.connector.ComfyUIConnector` ``run()``
  called directly, no Celery: the connector's own share (it also downloads the output image
  through GET ``/view`` into the output store, which the direct client does not).
* **through jobqueue**: ``submit_job("comfyui", ...)`` to a real ``celery -A jobqueue worker``
  process (private Redis) and ``wait()``; ``in task`` is the task's own ``runtime`` fact
  (start of the task body to its end), so the connector's share is visible whatever
  ``wait()`` costs.

The floor of issue 30: the direct client that also downloads each output (GET ``/view``, read
to its end) plus plain Celery's no-op round trip (``bench.plain_app`` with jobqueue's delivery
and event settings, same Redis). Those two and jobqueue take turns, one job each per round,
so a load spike hits all three alike; the last line gives jobqueue's p50 over the sum of
theirs (target <= 1.2x). The direct client and the connector in-process run first, alone.

``requests`` counts ComfyUI's HTTP requests per job by route (the simulator records them;
warm-up included; the worker's health checks left out): unlike the times, it does not move with
the machine's load. An external server is counted when it answers ``GET /_sim/requests`` as
the simulator does (a real ComfyUI does with the request-log custom node shown in
docs/benchmarks.md §7); otherwise the column stays empty there.

    python -m bench.comfyui_roundtrip --jobs 200
    python -m bench.comfyui_roundtrip --jobs 300 --comfyui-url http://127.0.0.1:8188 --workflow wf.json
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import websocket

from bench.common import RedisServer, bench_settings, fmt_table, percentile, wait_worker_ready, worker_process
from bench.roundtrip import plain_client, plain_worker
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.connectors.base import Job
from jobqueue.connectors.comfyui.connector import EXAMPLE_WORKFLOW, ComfyUIConnector
from jobqueue.shared import job_record as facts
from jobqueue.shared.records import result_client
from jobqueue.sims.comfyui.process import SimulatorProcess
from jobqueue.transport.app import create_app


class DirectClient:
    """A minimal ComfyUI client: one websocket with our clientId, POST /prompt, wait for the
    end message of our prompt, GET /history/<id>."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client_id = uuid.uuid4().hex
        #: Requests made, by route as :func:`_requests_per_job` names them.
        self.sent: dict[str, int] = {}
        self.http = requests.Session()
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}",
                                              timeout=10)

    def run(self, workflow: dict[str, Any], view: bool = False) -> dict[str, Any]:
        """One prompt; with ``view`` also GET /view each output file (read to its end)."""
        self._count("POST /prompt", "GET /history/<id>")
        answer = self.http.post(f"{self.url}/prompt", json={"prompt": workflow, "client_id": self.client_id},
                                timeout=10)
        answer.raise_for_status()
        prompt_id = answer.json()["prompt_id"]
        while True:
            opcode, data = self.ws.recv_data()
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = json.loads(data)
            body = message.get("data") or {}
            if body.get("prompt_id") != prompt_id:
                continue
            # The end: ComfyUI writes /history between execution_success and this message.
            if message["type"] == "executing" and body.get("node") is None:
                break
            if message["type"] in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"prompt failed: {message}")
        history: dict[str, Any] = self.http.get(f"{self.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
        if view:
            for output in history.get("outputs", {}).values():
                for item in output.get("images", []):
                    params = {k: item[k] for k in ("filename", "subfolder", "type")}
                    self._count("GET /view")
                    got = self.http.get(f"{self.url}/view", params=params, timeout=10)
                    got.raise_for_status()
                    assert got.content
        return history

    def _count(self, *paths: str) -> None:
        for path in paths:
            self.sent[path] = self.sent.get(path, 0) + 1

    def close(self) -> None:
        self.ws.close()
        self.http.close()


def _times(run: Any, jobs: int) -> list[float]:
    out = []
    for _ in range(jobs):
        started = time.perf_counter()
        run()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _row(side: str, ms: list[float], **extra: Any) -> dict[str, Any]:
    return {"side": side, "jobs": len(ms), "p50 ms": percentile(ms, 50), "p90 ms": percentile(ms, 90),
            "p99 ms": percentile(ms, 99), **extra}


#: The routes a job uses (a worker's health checks also ask /system_stats and /models).
JOB_ROUTES = ("/prompt", "/queue", "/history/", "/view", "/interrupt")


RequestLog = Callable[[], list[dict[str, Any]]]


def request_log(url: str, sim: SimulatorProcess | None) -> RequestLog | None:
    """What reads the server's request log: the simulator's, or an external server's that answers
    ``GET /_sim/requests`` the same way (a real ComfyUI with the request-log custom node); None
    when it does not (nothing to count)."""
    if sim is not None:
        return sim.requests

    def read() -> list[dict[str, Any]]:
        answer = requests.get(f"{url}/_sim/requests", timeout=10)
        answer.raise_for_status()
        got: list[dict[str, Any]] = answer.json()
        return got

    try:
        return read if isinstance(read(), list) else None
    except (requests.RequestException, ValueError):
        return None


def _requests_per_job(log: RequestLog | None, since: float, jobs: int,
                      besides: dict[str, int] | None = None) -> str:
    """ComfyUI requests per job since ``since`` (wall clock), by route: a count, not a time, so
    it does not depend on how busy the machine is. Empty when the server keeps no log (``log``
    None)."""
    if log is None:
        return ""
    paths: dict[str, int] = {}
    for r in log():
        if r["time"] < since or not r["path"].startswith(JOB_ROUTES):
            continue
        path = f"{r['method']} {'/history/<id>' if r['path'].startswith('/history/') else r['path']}"
        paths[path] = paths.get(path, 0) + 1
    for path, n in (besides or {}).items():  # another side's requests meanwhile (the direct client's)
        paths[path] -= n
    return ", ".join(f"{path} {n / jobs:.2f}" for path, n in sorted(paths.items()))


def load_workflow(path: str | None) -> dict[str, Any]:
    """The API-format workflow in the JSON file ``path`` (``EXAMPLE_WORKFLOW`` when None)."""
    if path is None:
        return EXAMPLE_WORKFLOW
    workflow = json.loads(Path(path).read_text())
    if not isinstance(workflow, dict) or not workflow or not all(
            isinstance(node, dict) and "class_type" in node for node in workflow.values()):
        raise SystemExit(f"{path}: not an API-format workflow ({{node id: {{class_type, inputs}}}}); "
                         "ComfyUI's 'Export (API)' writes one")
    return workflow


def server_version(url: str) -> str:
    """The ``comfyui_version`` ComfyUI reports in ``/system_stats`` (for the record)."""
    stats = requests.get(f"{url}/system_stats", timeout=10).json()
    return str(stats.get("system", {}).get("comfyui_version", "unknown"))


def run_direct(url: str, workflow: dict[str, Any], jobs: int) -> list[float]:
    client = DirectClient(url)
    try:
        client.run(workflow)  # warm (and make the workflow cached)
        return _times(lambda: client.run(workflow), jobs)
    finally:
        client.close()


def run_connector(url: str, workflow: dict[str, Any], workdir: Path, jobs: int) -> list[float]:
    connector = ComfyUIConnector(Settings(comfyui_url=url, output_dir=str(workdir / "outputs-inproc")))
    connector.start()

    def one() -> None:
        job = Job(id=uuid.uuid4().hex, service="comfyui", payload={"workflow": workflow})
        result = connector.run(job, lambda **_: None)
        assert result["files"], result

    try:
        one()  # warm: the websocket, the HTTP connection
        return _times(one, jobs)
    finally:
        connector.stop()


def run_jobqueue(url: str, workflow: dict[str, Any], redis_url: str, workdir: Path,
                 jobs: int) -> tuple[dict[str, list[float]], list[float], dict[str, int]]:
    """Three sides taking turns, one job each per round (a load spike hits all alike): the
    direct client with GET /view, plain Celery's no-op round trip (same delivery and event
    settings, same Redis) and jobqueue. Their times by side, and jobqueue's *in task* times."""
    # The worker is a child process: it gets ``url`` as JOBQUEUE_COMFYUI_URL (Settings.to_env).
    settings = bench_settings(redis_url, workdir, connectors=("comfyui",), comfyui_url=url)
    app = create_app(settings)
    plain = plain_client(redis_url)
    direct = DirectClient(url)
    worker = worker_process(settings, "gpu0", workdir / "worker.log")
    theirs = plain_worker(redis_url, workdir)
    worker.start()
    try:
        wait_worker_ready(app, f"gpu0@{settings.machine_id}", worker)
        wait_worker_ready(plain, f"plain0@{socket.gethostname()}", theirs)
        ids: list[str] = []

        def ours() -> None:
            handle = submit_job("comfyui", {"workflow": workflow}, app=app)
            ids.append(handle.id)
            handle.wait(timeout=60)

        sides: dict[str, Callable[[], Any]] = {
            "direct": lambda: direct.run(workflow, view=True),
            "plain": lambda: plain.send_task("bench.noop", queue="plain").get(timeout=30),
            "jobqueue": ours,
        }
        for _ in range(10):  # warm: connections, subscriptions, imports on every side
            for one in sides.values():
                one()
        ids.clear()
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(jobs):
            for side, one in sides.items():
                times[side] += _times(one, 1)
        known = facts.read_many(result_client(app), ids)
        inside = [float(known[i]["runtime"]) * 1000 for i in ids if known.get(i, {}).get("runtime") is not None]
        return times, inside, direct.sent
    finally:
        worker.stop()
        theirs.stop()
        direct.close()
        plain.close()
        app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-jobqueue", action="store_true", help="no worker: direct client and connector only")
    parser.add_argument("--comfyui-url", default=None,
                        help="a running ComfyUI (e.g. a real one on http://127.0.0.1:8188) instead of a simulator")
    parser.add_argument("--workflow", default=None,
                        help="API-format workflow JSON file, cached after its first run (default: EXAMPLE_WORKFLOW)")
    args = parser.parse_args(argv)
    workflow = load_workflow(args.workflow)
    workdir = Path(tempfile.mkdtemp(prefix="bench-comfyui-"))
    sim: SimulatorProcess | None = None
    if args.comfyui_url:
        url = args.comfyui_url.rstrip("/")
    else:
        sim = SimulatorProcess(output_dir=workdir / "sim-out", log_path=workdir / "sim.log").start()
        url = sim.url
    log = request_log(url, sim)
    server = RedisServer().start() if not args.skip_jobqueue else None
    rows = []
    try:
        print(f"ComfyUI {server_version(url)} at {url} ({'simulator' if sim else 'external server'}{'' if log else ', no request log'}), "
              f"workflow {args.workflow or 'EXAMPLE_WORKFLOW'} ({len(workflow)} nodes)")
        since = time.time()
        direct = run_direct(url, workflow, args.jobs)
        rows.append(_row("direct ComfyUI client", direct, requests=_requests_per_job(log, since, args.jobs + 1)))
        since = time.time()
        connector = run_connector(url, workflow, workdir, args.jobs)
        rows.append(_row("connector in-process", connector, requests=_requests_per_job(log, since, args.jobs + 1)))
        if server is not None:
            since = time.time()
            times, inside, besides = run_jobqueue(url, workflow, server.url(0), workdir, args.jobs)
            rows.append(_row("direct client + GET /view (turns)", times["direct"]))
            rows.append(_row("plain Celery no-op round trip (turns)", times["plain"]))
            rows.append(_row("through jobqueue (submit -> wait, turns)", times["jobqueue"],
                             **{"in task p50 ms": percentile(inside, 50) if inside else float("nan"),
                                "requests": _requests_per_job(log, since, args.jobs + 10, besides)}))
    finally:
        if server is not None:
            server.stop()
        if sim is not None:
            sim.stop()
    print(fmt_table(rows, ["side", "jobs", "p50 ms", "p90 ms", "p99 ms", "in task p50 ms", "requests"]))
    if len(rows) == 5:
        floor = rows[2]["p50 ms"] + rows[3]["p50 ms"]
        print(f"floor (direct client + /view, plus plain Celery) {floor:.2f} ms p50; through jobqueue "
              f"{rows[4]['p50 ms']:.2f} ms = {rows[4]['p50 ms'] / floor:.2f}x the floor (target <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
