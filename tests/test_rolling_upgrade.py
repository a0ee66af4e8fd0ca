"""Issue 23: a rolling upgrade. Workers of the layout before issue 23 and of today's serve one
broker: what the old code wrote (broker messages, result-backend keys, events; recorded in
``tests/data/rolling-upgrade/`` by its ``record.py``, see the README there) is read, run and
ingested by today's code, and today's code writes the same formats.

The live runs are real: a real Redis database, real ``celery -A jobqueue worker`` subprocesses.
Ids, host names and times differ from run to run; everything else is compared as is.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import jobqueue
from jobqueue.client.jobs import JobNotFinished
from jobqueue.config import Settings
from jobqueue.errors import JobFailed
from jobqueue.shared.records import queued_key
from jobqueue.states import JobStatus
from jobqueue.transport.app import create_app
from jobqueue.worker.concerns import install as install_worker_concerns
from monitor.ingest.hub import ChangeHub
from monitor.ingest.raw_reader import EventDecoder
from monitor.ingest.validate import check
from monitor.ingest.writer import Writer
from monitor.merge.apply import apply
from monitor.repair.reconcile import Repair
from monitor.store import Store
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT
from tests.helpers import ROOT, wait_for

#: The recordings post webhooks to a fixed port (the recorded messages name it).
pytestmark = pytest.mark.serial

DATA = ROOT / "tests" / "data" / "rolling-upgrade"


def _load_recorder() -> Any:
    spec = importlib.util.spec_from_file_location("rolling_record", DATA / "record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _load_recorder()


def recorded(name: str) -> Any:
    """One file of the recording made with the code before issue 23."""
    return json.loads((DATA / f"{name}.json").read_text())


OLD: dict[str, Any] = {name: recorded(name) for name in
                       ("jobs", "messages", "keys-submitted", "keys-running", "keys-ended", "events", "tasks",
                        "surface")}

#: Fields whose values are times, durations, host-local or per-process facts: compared by
#: presence only (``<varies>`` when set).
VARIES = {"date_done", "submitted_at", "received_at", "started_at", "finished_at", "runtime", "duration", "at",
          "workflow_submitted_at", "first", "timestamp", "eta_seconds", "eta_at", "traceback", "origin",
          "hostname", "pid", "clock", "utcoffset", "loadavg", "sw_ver", "sw_sys", "sw_ident", "heartbeat_at",
          "heartbeat_age", "online_at", "updated_at", "since", "seq", "local_received", "ended_at"}


#: A wall-clock time written as text (e.g. in a webhook body, inside a task's kwargsrepr).
TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def roles(run: dict[str, Any]) -> dict[str, str]:
    """Every id of one recorded run by its role: ``<plain:0>``, ``<workflow>``, ``<machine>``..."""
    names = {run["machine_id"]: "<machine>"}
    for scenario, job in run["jobs"].items():
        for index, job_id in enumerate(job.get("ids", [])):
            names[job_id] = f"<{scenario}:{index}>"
        if "workflow_id" in job:
            names[job["workflow_id"]] = "<workflow>"
    return names


def comparable(value: Any, names: dict[str, str]) -> Any:
    """``value`` with its ids named by role and its :data:`VARIES` fields reduced to presence;
    JSON held in strings (kwargsrepr, facts, records) is compared as the JSON it holds."""
    if isinstance(value, dict):
        return {k: ("<varies>" if k in VARIES and v is not None else comparable(v, names)) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v, names) for v in value]
    if isinstance(value, str):
        if value[:1] in "{[\"":
            try:
                return comparable(json.loads(value), names)
            except ValueError:
                pass
        return TIME_TEXT.sub("<time>", record.abstract(value, names))
    return value


#: Fields records and events gained since the recording (additions old readers ignore): a webhook
#: try's ``refused`` (issue 24, targets that resolve to a private address); a worker's ``loaded``
#: checkpoints and ``load_seconds`` in its capabilities (issue 26, warm routing).
ADDED_FIELDS = {"refused", "loaded", "load_seconds"}


#: Event fields added since the recording (issue 28, point 3: the events carry the very times and
#: result the job's record holds, so a live monitor needs no correction).
ADDED_EVENT_FIELDS: dict[str, set[str]] = {"task-failed": {"runtime"}}


#: Keys written since the recording (an addition old workers neither read nor write): each
#: service's queued-jobs index (issue 27, the queue caps' count).
ADDED_KEYS = {queued_key("simulation")}


def without_added(value: Any) -> Any:
    """``value`` without the :data:`ADDED_FIELDS` anywhere in it."""
    if isinstance(value, dict):
        return {k: without_added(v) for k, v in value.items() if k not in ADDED_FIELDS}
    if isinstance(value, list):
        return [without_added(v) for v in value]
    return value


def message(raw: str) -> dict[str, Any]:
    """A kombu message as the Redis transport stores it, its body decoded."""
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    return {**envelope, "body": json.loads(base64.b64decode(envelope["body"]))}


def key_shapes(keys: dict[str, Any], names: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """Each key's name with ids abstracted -> (type, expires), the :data:`ADDED_KEYS` left out, and
    kombu's queue bindings too: kombu declares a queue once per connection and process, so whether
    a client's declaration reaches this database depends on what ran before it in the process
    (workers declare their queues in any case)."""
    return {record.abstract(name, names): (entry["type"], entry["expires"]) for name, entry in keys.items()
            if name not in ADDED_KEYS and not name.startswith("_kombu.binding")}


def settings_for(url: str, machine: str, tmp: Path) -> Settings:
    settings = record.scenario_settings(Settings, url, machine, tmp)
    assert isinstance(settings, Settings)
    return settings


@pytest.fixture(scope="module")
def new_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The recorder's scenarios run once more with today's code (client, worker, events)."""
    tmp = tmp_path_factory.mktemp("new-run")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    sink = record.WebhookSink()
    try:
        run = record.run_scenarios(settings_for(url, f"m{uuid.uuid4().hex[:8]}", tmp), tmp, sink)
    finally:
        sink.stop()
        redis.Redis.from_url(url).flushdb()
    yield run


#: The state each recorded job ends in, by role.
ENDS = {"<failing:0>": JobStatus.FAILED, "<cancelled:0>": JobStatus.CANCELLED}


def ends(role: str) -> JobStatus:
    return ENDS.get(role, JobStatus.COMPLETED)


def ended_ids(keys: dict[str, Any]) -> list[str]:
    return [name.removeprefix("celery-task-meta-") for name in keys if name.startswith("celery-task-meta-")]


def test_the_recording_is_whole_and_names_every_scenario():
    # Then the recording holds what the tests below rely on: every scenario's jobs ended with
    # a result record, the event stream of a full run, the broker messages of every kind
    jobs = OLD["jobs"]["jobs"]
    assert set(jobs) == {"plain", "pinned", "requires", "failing", "cancelled", "workflow", "batch",
                         "webhook_delivery"}
    job_ids = [i for job in jobs.values() for i in job.get("ids", [])]
    assert len(job_ids) == 9 and set(job_ids) <= set(ended_ids(OLD["keys-ended"]))
    types = {record.event_type(e["raw"]) for e in OLD["events"]}
    assert {"task-sent", "task-received", "task-started", "task-progress", "task-succeeded", "task-failed",
            "task-retried", "task-revoked", "connector-status", "worker-online", "worker-heartbeat",
            "worker-offline", "job-webhook"} <= types
    tasks = {message(raw)["headers"]["task"] for entries in OLD["messages"].values() for raw in entries}
    assert tasks == {"jobqueue.run_job", "jobqueue.deliver_webhook"}


# -- (1) old messages, new worker ------------------------------------------------------------


def test_messages_an_old_client_queued_are_run_by_a_new_worker_with_the_results_an_old_worker_gave(
        redis_client, app, start_worker, machine_id, tmp_path):
    # Given the broker and result backend exactly as the old client left them (messages of a
    # plain job with a webhook, a pinned priority-9 job with requirements, a job in its
    # capability queue, a failing job, a job cancelled while queued, a two-step workflow, a
    # batch, a webhook delivery)
    record.restore_keys(redis_client, OLD["keys-submitted"])
    plain = OLD["jobs"]["jobs"]["plain"]["ids"][0]
    sink = record.WebhookSink()
    try:
        # When a worker of today's code starts on that broker, and its service goes down under
        # the plain job for a moment as it did under the old worker
        down = tmp_path / "simulation-down"
        start_worker("gpu0", WORKER_TAGS="customer:acme", SIMULATION_DOWN_FILE=str(down),
                     WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")  # the local receiver, opened on purpose
        handle = jobqueue.get_job(plain, app=app)
        wait_for(lambda: handle.progress()["step"] >= record.RUNNING_STEP, 60, what="the plain job to run")
        record.retry_through_outage(jobqueue, app, down, plain)
        job_ids = [i for job in OLD["jobs"]["jobs"].values() for i in job.get("ids", [])]
        wait_for(lambda: all(jobqueue.get_job(i, app=app).status() in (*ENDS.values(), JobStatus.COMPLETED)
                             for i in job_ids), 90, what="every old job to end")
        wait_for(lambda: len(sink.bodies) >= 2, 30, what="both webhooks")
        wait_for(lambda: redis_client.exists(f"jobqueue-webhook-attempts-{plain}"), 30, what="the webhook record")
    finally:
        sink.stop()
    # Then every job ended as with the old worker: the same result records (status, result,
    # error, the kwargs they ran with), the same job facts (attempts and their history
    # included), retry, webhook and workflow records
    now = record.dump_keys(redis_client)
    names = {**roles(OLD["jobs"]), machine_id: "<machine>"}
    old_ended = {record.abstract(k, names): v for k, v in OLD["keys-ended"].items()}
    new_ended = {record.abstract(k, names): v for k, v in now.items()}
    for key, entry in old_ended.items():
        if key.startswith(("celery-task-meta-", "jobqueue-")):
            assert key in new_ended, key
            assert without_added(comparable(new_ended[key], names)) == comparable(entry, names), key
    results = {role: jobqueue.get_job(job_id, app=app) for job_id, role in roles(OLD["jobs"]).items()
               if role.startswith("<") and ":" in role}
    assert results["<workflow:1>"].result()["output"] == "first"
    assert [results[f"<batch:{i}>"].result()["seed"] for i in (0, 1)] == [100, 101]
    assert results["<plain:0>"].result()["attempt"] == 1
    assert results["<cancelled:0>"].status() == JobStatus.CANCELLED
    assert json.loads(sink.bodies[0])["data"]["status"] == "completed"


# -- (2) new client, message format an old worker reads --------------------------------------


def test_a_new_client_queues_messages_of_the_same_structure_as_the_old_one(new_run):
    # Given the messages the old client queued and those today's client queued for the same
    # scenarios (to the same queues, priority lists included)
    old_names, new_names = roles(OLD["jobs"]), roles(new_run["jobs"])
    old = {record.abstract(k, old_names): v for k, v in OLD["messages"].items()}
    new = {record.abstract(k, new_names): v for k, v in new_run["messages"].items()}
    assert sorted(new) == sorted(old)
    # Then each message is the same: task name, header keys and values, properties (priority,
    # routing), and the arguments in the body, up to ids and times
    for queue in old:
        assert len(new[queue]) == len(old[queue]), queue
        for before, after in zip(old[queue], new[queue], strict=True):
            a, b = message(before), message(after)
            assert b["headers"]["task"] == a["headers"]["task"]
            assert sorted(b["headers"]) == sorted(a["headers"])
            assert b["properties"]["priority"] == a["properties"]["priority"]
            assert comparable(b, new_names) == comparable(a, old_names), queue


# -- (3) old result records, new client and new repair ----------------------------------------


def test_old_result_records_read_right_through_the_new_client(redis_client, app):
    jobs = OLD["jobs"]["jobs"]
    plain, failing, cancelled = (jobs[role]["ids"][0] for role in ("plain", "failing", "cancelled"))
    # Given the result backend as the old client left it: every job is queued, none unknown
    record.restore_keys(redis_client, OLD["keys-submitted"])
    assert jobqueue.get_job(plain, app=app).status() == JobStatus.QUEUED
    assert jobqueue.get_job(str(uuid.uuid4()), app=app).status() == JobStatus.UNKNOWN
    with pytest.raises(JobNotFinished):
        jobqueue.get_job(plain, app=app).result()
    # Given it as an old worker left it in the middle of the plain job: processing, its progress
    redis_client.flushdb()
    record.restore_keys(redis_client, OLD["keys-running"])
    running = json.loads(OLD["keys-running"][f"celery-task-meta-{plain}"]["value"])["result"]
    handle = jobqueue.get_job(plain, app=app)
    assert handle.status() == JobStatus.PROCESSING
    assert handle.progress() == {k: running[k] for k in handle.progress()}
    assert handle.progress()["step"] >= record.RUNNING_STEP
    # Given it once every job ended: results, the failure, the workflow as a whole
    redis_client.flushdb()
    record.restore_keys(redis_client, OLD["keys-ended"])
    for job_id in [i for job in jobs.values() for i in job.get("ids", []) if i not in (failing, cancelled)]:
        meta = json.loads(OLD["keys-ended"][f"celery-task-meta-{job_id}"]["value"])
        done = jobqueue.get_job(job_id, app=app)
        assert done.status() == JobStatus.COMPLETED
        assert done.result() == meta["result"] and done.wait(timeout=5) == meta["result"]
        assert done.progress()["percent"] == 100.0
    failed = jobqueue.get_job(failing, app=app)
    assert failed.status() == JobStatus.FAILED
    with pytest.raises(JobFailed) as caught:
        failed.result()
    assert caught.value.error["type"] == "ExecutionFailed"
    assert caught.value.error["message"] == "simulated failure at step 2"
    with pytest.raises(JobFailed) as caught:
        jobqueue.get_job(cancelled, app=app).wait(timeout=5)
    assert caught.value.status == "cancelled"
    flow = jobqueue.get_workflow(jobs["workflow"]["workflow_id"], app=app)
    assert flow.statuses() == [JobStatus.COMPLETED, JobStatus.COMPLETED]
    assert flow.wait(timeout=5)["output"] == "first"


def _repair_into(store: Store, settings: Settings, app: Any) -> None:
    writer = Writer(store, ChangeHub()).start()
    try:
        Repair(app, writer, store, settings, inspect_timeout=0.3).run_once()
        assert writer.wait_idle(30)
    finally:
        writer.stop()


def test_old_result_records_and_queued_messages_rebuild_the_monitors_jobs(redis_client, app, settings, tmp_path):
    jobs = OLD["jobs"]["jobs"]
    # Given the broker as the old client left it, and a monitor store that knows nothing
    record.restore_keys(redis_client, OLD["keys-submitted"])
    queued_store = Store(f"sqlite:///{tmp_path / 'queued.db'}")
    # When the monitor's repair reads it
    _repair_into(queued_store, settings, app)
    # Then every job waiting in its service queue is a queued job, with its service and priority
    for role in ("plain", "failing"):
        row = queued_store.job(jobs[role]["ids"][0], with_events=False)
        assert row is not None and (row["status"], row["service"], row["priority"]) == ("queued", "simulation", 5)
    step = queued_store.job(jobs["workflow"]["ids"][0], with_events=False)
    assert step is not None and (step["status"], step["workflow_id"], step["step"], step["priority"]) == \
        ("queued", jobs["workflow"]["workflow_id"], 1, 7)
    queued_store.close()
    # Given the result backend once the old worker ended every job
    redis_client.flushdb()
    record.restore_keys(redis_client, OLD["keys-ended"])
    store = Store(f"sqlite:///{tmp_path / 'ended.db'}")
    _repair_into(store, settings, app)
    # Then each job is rebuilt with its final state, result or error, worker and options
    for job_id, role in roles(OLD["jobs"]).items():
        if ":" not in role:
            continue
        meta = json.loads(OLD["keys-ended"][f"celery-task-meta-{job_id}"]["value"])
        row = store.job(job_id, with_events=False)
        assert row is not None, role
        assert row["status"] == ends(role).value, role
        if role == "<cancelled:0>":
            assert row["finished_at"] is not None and row["worker"] is None
            continue
        options = meta["kwargs"]["options"]
        assert (row["service"], row["queue"], row["priority"], row["worker"], row["machine_id"]) == \
            ("simulation", options["queue"], options["priority"], "gpu0@recmachine", "recmachine"), role
        if role == "<failing:0>":
            assert row["error"]["type"] == "ExecutionFailed"
        else:
            assert row["status"] == "completed" and row["result"] == meta["result"], role
    store.close()


# -- (4) old events, new monitor -------------------------------------------------------------


def ingest(stream: list[dict[str, Any]], app: Any, path: Path) -> tuple[Store, list[Any], list[Any]]:
    """Feed a recorded raw event stream through the monitor's decoder, gate and merge rules,
    each event at the time it was received: (store, malformed, refused)."""
    malformed: list[Any] = []
    refused: list[Any] = []
    decoder = EventDecoder(app, malformed.append)
    store = Store(f"sqlite:///{path}")
    for item in stream:
        for event in decoder.decode(item["raw"].encode()):
            event["local_received"] = item["received"]
            refusal = check(event, item["received"], 300.0)
            if refusal is not None:
                refused.append(refusal)
                continue
            with store.write(now=item["received"]) as tx:
                apply(event, tx)
    return store, malformed, refused


def test_an_old_event_stream_builds_the_same_rows_in_the_new_monitor_as_a_new_run(new_run, app, tmp_path):
    # Given the event stream of a full run by old workers, and of the same run by new ones
    old_store, old_malformed, old_refused = ingest(OLD["events"], app, tmp_path / "old.db")
    new_store, new_malformed, new_refused = ingest(new_run["events"], app, tmp_path / "new.db")
    # Then the new monitor takes every old event: none malformed, none refused
    assert (old_malformed, old_refused) == ([], [])
    assert (new_malformed, new_refused) == ([], [])
    # and every job ends with the same row whichever layout ran it
    old_names, new_names = roles(OLD["jobs"]), roles(new_run["jobs"])
    by_role = {role: job_id for job_id, role in new_names.items()}
    for job_id, role in old_names.items():
        if ":" not in role:
            continue
        before = old_store.job(job_id, with_events=False)
        after = new_store.job(by_role[role], with_events=False)
        assert before is not None and after is not None, role
        assert before["status"] == ends(role).value, role
        assert comparable(after, new_names) == comparable(before, old_names), role
    # and the worker's row is the same (its name, identity, queues, connectors, counts)
    old_worker = old_store.workers(now=OLD["events"][-1]["received"])
    new_worker = new_store.workers(now=new_run["events"][-1]["received"])
    assert len(old_worker) == len(new_worker) == 1
    assert old_worker[0]["status"] == "offline" and old_worker[0]["failed"] == 1
    assert without_added(comparable(new_worker[0], new_names)) == without_added(comparable(old_worker[0], old_names))
    old_store.close()
    new_store.close()


def test_every_event_type_keeps_its_fields(new_run):
    # Given the events of the old run and of the new one, by type
    def fields(stream: list[dict[str, Any]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for item in stream:
            envelope = json.loads(item["raw"])
            payload = json.loads(base64.b64decode(envelope["body"]))
            for event in payload if isinstance(payload, list) else [payload]:
                out.setdefault(event["type"], set()).update(event)
        return out

    # Then the new workers send the same types, each with the same fields, and only the fields
    # added since the recording besides (additions old monitors ignore)
    new, old = fields(new_run["events"]), fields(OLD["events"])
    assert set(new) == set(old)
    added = {kind: new[kind] - old[kind] for kind in new if new[kind] - old[kind]}
    assert {kind: old[kind] - new[kind] for kind in old if old[kind] - new[kind]} == {}
    assert added == ADDED_EVENT_FIELDS


# -- (5) key formats --------------------------------------------------------------------------


def test_a_new_run_writes_the_keys_an_old_run_wrote(new_run):
    old_names, new_names = roles(OLD["jobs"]), roles(new_run["jobs"])
    # Then before any worker ran and once every job ended, the same keys exist (names up to
    # ids, types, whether they expire)
    for moment in ("keys-submitted", "keys-ended"):
        old_keys = key_shapes(OLD[moment], old_names)
        # (a job's facts are written at submit now, issue 28 point 3: what a late monitor needs)
        new_keys = {k: v for k, v in key_shapes(new_run[moment], new_names).items()
                    if k in old_keys or not k.startswith("jobqueue-facts-")}
        assert new_keys == old_keys, moment
    # and while a job runs, its lease (kombu's unacked hash and index) and its records too
    def running(keys: dict[str, Any], names: dict[str, str]) -> dict[str, tuple[str, bool]]:
        return {k: v for k, v in key_shapes(keys, names).items() if "<plain:0>" in k or k.startswith("unacked")}

    assert running(new_run["keys-running"], new_names) == running(OLD["keys-running"], old_names)
    assert {"unacked", "unacked_index"} <= set(running(OLD["keys-running"], old_names))


# -- the public surface -----------------------------------------------------------------------


def test_the_public_names_settings_cli_and_task_names_did_not_move():
    surface = OLD["surface"]
    # Then every name the old package exported is exported and importable
    assert set(surface["public"]) <= set(jobqueue.__all__)
    from jobqueue import (  # noqa: F401 - the import is the check
        ConnectorStatus,
        InvalidPayloadError,
        JobHandle,
        JobNotFound,
        JobqueueError,
        SubmitError,
        UnknownServiceError,
        WorkflowFailed,
        app,
        get_app,
        get_job,
        submit_batch,
        submit_job,
        submit_workflow,
    )
    # and every JOBQUEUE_* variable still exists with its old default, every CLI command with
    # its old options (new ones may be added), and the app registers the same task names
    now = record.surface()
    for name, default in surface["settings"].items():
        assert name in now["settings"] and now["settings"][name] == default, name
    for command, options in surface["cli"].items():
        assert set(options) <= set(now["cli"].get(command, [])), command
    # (a worker's app: the worker class installs the concerns that register the tasks)
    celery_app = install_worker_concerns(create_app(Settings()))
    try:
        # (Celery's and ours: a test module's shared task can join any app built in its process)
        ours = sorted(name for name in celery_app.tasks.keys() if name.startswith(("celery.", "jobqueue.")))
        assert ours == OLD["tasks"]
    finally:
        celery_app.close()


@pytest.mark.parametrize("command", [[sys.executable, "-m", "monitor", "--help"],
                                     [sys.executable, "-m", "jobqueue.cli", "--help"],
                                     ["jobqueue", "--help"]])
def test_the_commands_still_answer_help(command):
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
