"""Record what a jobqueue release writes to Redis, for the rolling-upgrade tests.

Run it with the code to record (the release before issue 23, checked out elsewhere)::

    cd /path/to/old/checkout && PYTHONPATH=$PWD python /path/to/record.py OUTDIR [REDIS_URL]

``REDIS_URL`` (default ``redis://127.0.0.1:6379/7``) names a database that is FLUSHED. The
script submits a few jobs through the public client with no worker running (so their broker
messages can be read as kombu stored them), then starts one real ``celery -A jobqueue worker``
subprocess, snapshots every Redis key while a job runs and once all have ended, and keeps
every raw message of the Celery event stream. It writes, into ``OUTDIR``:

``jobs.json``      which job id is which scenario, and what each was submitted with
``messages.json``  every broker list entry (queue key -> raw entries) before any worker ran
``keys-submitted.json`` / ``keys-running.json`` / ``keys-ended.json``
                   every Redis key (type, value, whether it expires) at those moments
``events.json``    every raw pub/sub message of the event exchange, with its receipt time
``tasks.json``     the task names the Celery app registers
``surface.json``   ``jobqueue.__all__``, every ``JOBQUEUE_*`` variable with its default, the CLI

The helpers below (:func:`dump_keys`, :func:`abstract`) import nothing from jobqueue, so the
tests load this file to compare a new run with the recording the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: A Celery/jobqueue id (uuid4 text) or kombu's delivery tag (also a uuid4).
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A webhook delivery id (32 hex digits).
HEX32 = re.compile(r"\b[0-9a-f]{32}\b")


def text(raw: bytes) -> Any:
    """``raw`` as text, or ``{"base64": ...}`` when it is not UTF-8 (e.g. a preview image)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(raw).decode()}


def dump_keys(client: Any) -> dict[str, Any]:
    """Every key of ``client``'s database: ``{name: {"type", "expires", "value"}}``."""
    out: dict[str, Any] = {}
    for raw_key in sorted(client.scan_iter(count=1000)):
        kind = client.type(raw_key).decode()
        value: Any
        if kind == "string":
            value = text(client.get(raw_key) or b"")
        elif kind == "hash":
            value = {k.decode(): text(v) for k, v in sorted(client.hgetall(raw_key).items())}
        elif kind == "list":
            value = [text(v) for v in client.lrange(raw_key, 0, -1)]
        elif kind == "zset":
            value = [[m.decode(), s] for m, s in client.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "set":
            value = sorted(v.decode() for v in client.smembers(raw_key))
        else:
            continue  # gone between SCAN and TYPE
        out[raw_key.decode()] = {"type": kind, "expires": client.ttl(raw_key) >= 0, "value": value}
    return out


def restore_keys(client: Any, keys: dict[str, Any], expires: int = 86400) -> None:
    """Write the keys of a :func:`dump_keys` recording back (an expiring key gets ``expires`` s)."""
    with client.pipeline(transaction=False) as pipe:
        for name, entry in keys.items():
            kind, value = entry["type"], entry["value"]
            if any(isinstance(v, dict) for v in (value.values() if kind == "hash" else [value])):
                raise ValueError(f"{name}: binary values are not restored")
            if kind == "string":
                pipe.set(name, value)
            elif kind == "hash":
                pipe.hset(name, mapping=value)
            elif kind == "list":
                pipe.rpush(name, *value)
            elif kind == "zset":
                pipe.zadd(name, {member: score for member, score in value})
            elif kind == "set":
                pipe.sadd(name, *value)
            if entry["expires"]:
                pipe.expire(name, expires)
        pipe.execute()


def event_type(raw: str) -> str | None:
    """The ``type`` of the (first) event in one raw message of the event exchange."""
    import base64

    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    payload = json.loads(body)
    first = payload[0] if isinstance(payload, list) else payload
    return first.get("type") if isinstance(first, dict) else None


def abstract(name: str, names: dict[str, str] | None = None) -> str:
    """``name`` with its ids abstracted: known ones by their role (``names``: id -> role, e.g.
    the machine id -> ``<machine>``), every other uuid as ``<id>``, 32-hex ids as ``<hex>``."""
    for value, role in sorted((names or {}).items(), key=lambda item: -len(item[0])):
        name = name.replace(value, role)
    return HEX32.sub("<hex>", UUID.sub("<id>", name))


# -- recording (imports jobqueue: the code under record) ---------------------------------------


def _imports() -> dict[str, Any]:
    """The pieces of jobqueue the recorder uses, wherever the recorded release keeps them."""
    import jobqueue
    from jobqueue.config import Settings

    try:
        from jobqueue.celery_app import create_app
        from jobqueue.internals import fanout_pattern
        from jobqueue.webhooks import build_delivery
        from jobqueue.webhooks import enqueue as enqueue_webhook
    except ImportError:  # the layout of issue 23
        from jobqueue.transport.app import create_app  # type: ignore[no-redef]
        from jobqueue.transport.internals import fanout_pattern  # type: ignore[no-redef]
        from jobqueue.worker.webhooks import build_delivery  # type: ignore[no-redef]
        from jobqueue.worker.webhooks import enqueue as enqueue_webhook  # type: ignore[no-redef]
    return {"jobqueue": jobqueue, "Settings": Settings, "create_app": create_app,
            "fanout_pattern": fanout_pattern, "enqueue_webhook": enqueue_webhook,
            "build_delivery": build_delivery}


class RawEvents:
    """Every raw message of the event exchange's pub/sub channels, in a thread."""

    def __init__(self, client: Any, pattern: str) -> None:
        self.pubsub = client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(pattern)
        self.items: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RawEvents:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "pmessage":
                self.items.append({"received": time.time(), "channel": msg["channel"].decode(),
                                   "raw": msg["data"].decode()})

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        return self.items


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def submit_all(jq: Any, app: Any, webhook_url: str) -> dict[str, Any]:
    """The recorded scenarios, submitted through the public client: ``{name: job ids + args}``."""
    jobs: dict[str, Any] = {}

    def job(name: str, payload: dict[str, Any], **options: Any) -> None:
        handle = jq.submit_job("simulation", payload, app=app, **options)
        jobs[name] = {"ids": [handle.id], "payload": payload, "options": options}

    job("plain", {"steps": 6, "step_seconds": 0.4, "output": "plain"}, webhook_url=webhook_url)
    job("pinned", {"steps": 1, "step_seconds": 0.05, "output": "pinned"}, priority=9, queue="gpu0",
        timeout=60.0, requires={"tags": ["customer:acme"]})
    job("requires", {"steps": 1, "step_seconds": 0.05, "output": "requires"}, priority=2,
        requires={"tags": ["customer:acme"]})
    job("failing", {"steps": 3, "step_seconds": 0.05, "fail_at_step": 2, "output": "never"})
    job("cancelled", {"steps": 1, "step_seconds": 0.05, "output": "must not run"})
    assert jq.get_job(jobs["cancelled"]["ids"][0], app=app).cancel()  # while no worker is online
    steps = [("simulation", {"steps": 1, "step_seconds": 0.05, "output": "first"}),
             ("simulation", {"steps": 1, "step_seconds": 0.05, "output": {"$prev": "output"}})]
    flow = jq.submit_workflow(steps, priority=7, app=app)
    jobs["workflow"] = {"ids": [s.id for s in flow.steps], "workflow_id": flow.id, "steps": steps,
                        "options": {"priority": 7}}
    batch = jq.submit_batch("simulation", {"steps": 1, "step_seconds": 0.05, "seed": 100}, 2,
                            vary={"seed": "increment"}, app=app)
    jobs["batch"] = {"ids": [h.id for h in batch], "payload": {"steps": 1, "step_seconds": 0.05, "seed": 100},
                     "options": {"count": 2, "vary": {"seed": "increment"}}}
    return jobs


#: The port the recorded jobs' webhooks go to (fixed: the recorded messages name it, and the
#: tests that replay them serve it).
WEBHOOK_PORT = 47917


class WebhookSink:
    """An HTTP server on ``127.0.0.1:port`` that answers 204 to every POST and keeps the bodies."""

    def __init__(self, port: int = WEBHOOK_PORT) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies: list[str] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)).decode())
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}/hooks/jobqueue"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scenario_settings(settings_class: Any, url: str, machine: str, workdir: Path) -> Any:
    """The settings of a recorded run (fast leases and beats, the tag the scenarios require;
    where the code refuses private webhook targets, the local receiver's network opened)."""
    extra: dict[str, Any] = {}
    if "webhook_allowed_networks" in settings_class.model_fields:
        extra["webhook_allowed_networks"] = ("127.0.0.0/8", "::1/128")
    return settings_class(
        broker_url=url, result_backend=url, machine_id=machine, visibility_timeout=6.0, lease_interval=1.0,
        health_interval=1.0, status_beat=3.0, heartbeat_interval=2.0, output_dir=str(workdir / "outputs"),
        worker_tags=("customer:acme",), simulation_down_file=str(workdir / "simulation-down"), **extra,
    ).resolved()


def start_worker(settings: Any, app: Any, workdir: Path) -> Any:
    """A real ``celery -A jobqueue worker -Q gpu0`` of the checkout on ``sys.path``, ready."""
    from tests.helpers import WorkerProcess, child_env

    worker = WorkerProcess(child_env(settings.to_env()), queues="gpu0", log_path=workdir / "worker.log")
    return worker.start().wait_ready(app, timeout=60)


def surface() -> dict[str, Any]:
    """The public surface of the code on ``sys.path``: ``jobqueue.__all__``, every setting's
    ``JOBQUEUE_*`` variable with its default, and every ``jobqueue`` CLI command's options."""
    import jobqueue
    from jobqueue.cli import main
    from jobqueue.config import ENV_PREFIX, Settings

    settings = {ENV_PREFIX + name.upper(): json.loads(json.dumps(field.get_default(call_default_factory=True),
                                                                 default=str))
                for name, field in Settings.model_fields.items()}
    cli = {name: sorted(opt for param in command.params for opt in param.opts)
           for name, command in main.commands.items()}
    return {"public": sorted(jobqueue.__all__), "settings": settings, "cli": cli}


#: The plain job's step at which its keys are recorded and its service goes down: early, so
#: the outage comes while it still runs even on a slow machine (it has 6 steps of 0.4 s).
RUNNING_STEP = 1

#: The states every recorded job ends in.
ENDED = ("completed", "failed", "cancelled")


def retry_through_outage(jq: Any, app: Any, down: Path, job_id: str) -> None:
    """Take the simulated service down (the worker's ``simulation_down_file``, ``down``) under
    the running job ``job_id`` (it fails with ``ServiceUnavailable`` and is retried), then
    bring it back (the retry runs)."""
    handle = jq.get_job(job_id, app=app)
    down.touch()
    try:
        wait_for(lambda: handle.status().value == "retrying", 60, "the job to be retried")
    finally:
        down.unlink()


def run_scenarios(settings: Any, workdir: Path, sink: WebhookSink) -> dict[str, Any]:
    """Flush the settings' Redis database, run every scenario through one real worker and
    return the recordings by file name (without ``.json``)."""
    import redis

    mods = _imports()
    jq = mods["jobqueue"]
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    app = mods["create_app"](settings)
    out: dict[str, Any] = {"tasks": sorted(app.tasks.keys())}
    db = client.connection_pool.connection_kwargs.get("db", 0)
    events = RawEvents(client, mods["fanout_pattern"](int(db), app.conf.broker_transport_options,
                                                      app.conf.event_exchange)).start()
    jobs = submit_all(jq, app, sink.url)
    # A webhook delivery message as a worker enqueues it (read before any worker takes it).
    delivery = mods["build_delivery"](jobs["pinned"]["ids"][0], sink.url, jq.JobStatus.COMPLETED,
                                      service="simulation", result={"output": "pinned"}, error=None)
    mods["enqueue_webhook"](app, delivery)
    jobs["webhook_delivery"] = {"delivery": delivery}
    out["keys-submitted"] = dump_keys(client)
    out["messages"] = {k: v["value"] for k, v in out["keys-submitted"].items() if v["type"] == "list"}
    out["jobs"] = {"machine_id": settings.machine_id, "jobs": jobs}
    worker = start_worker(settings, app, workdir)
    try:
        plain = jq.get_job(jobs["plain"]["ids"][0], app=app)
        wait_for(lambda: plain.progress()["step"] >= RUNNING_STEP, 60, "the plain job to run")
        out["keys-running"] = dump_keys(client)
        retry_through_outage(jq, app, Path(settings.simulation_down_file), plain.id)
        every = [i for job in jobs.values() for i in job.get("ids", [])]
        wait_for(lambda: all(jq.get_job(i, app=app).status().value in ENDED for i in every), 60, "every job to end")
        wait_for(lambda: len(sink.bodies) >= 2, 30, "both webhooks to arrive")
        wait_for(lambda: client.llen(f"jobqueue-webhook-attempts-{jobs['plain']['ids'][0]}"), 30,
                 "the webhook attempt record")
        # One more heartbeat and connector beat of the idle worker, so the stream has them.
        seen = len(events.items)
        wait_for(lambda: len(events.items) > seen + 2, 30, "idle beats")
        out["keys-ended"] = dump_keys(client)
    finally:
        worker.stop()
    wait_for(lambda: any(event_type(e["raw"]) == "worker-offline" for e in events.items), 30, "worker-offline")
    out["events"] = events.stop()
    app.close()
    client.close()
    return out


def record(outdir: Path, url: str) -> None:
    """Record every file named in the module docstring into ``outdir``."""
    from jobqueue.config import Settings

    workdir = Path(tempfile.mkdtemp(prefix="rolling-record-"))
    sink = WebhookSink()
    try:
        recorded = run_scenarios(scenario_settings(Settings, url, "recmachine", workdir), workdir, sink)
    finally:
        sink.stop()
    recorded["surface"] = surface()
    outdir.mkdir(parents=True, exist_ok=True)
    for name, value in recorded.items():
        (outdir / f"{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    print(f"recorded into {outdir}: {', '.join(sorted(recorded))}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    record(Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/7")
