"""Redis Sentinel, everything on: a ``sentinel://`` broker and result backend in Celery's form,
with every Redis-only feature of jobqueue working on it, and a clear error for what cannot work.

The real-path tests run on one Sentinel group of this module (a master, a replica, three
sentinels: bench/sentinels.py), its master flushed before each test; the workers are real
``celery -A jobqueue worker`` processes (tests/conftest.py's fixtures, on Sentinel settings).
"""

from __future__ import annotations

import io
import json
import signal
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from bench.common import free_port
from bench.sentinels import MASTER_NAME, SentinelGroup
from jobqueue.client.jobs import submit_job
from jobqueue.config import Settings
from jobqueue.errors import ConfigError, NotReplicated, SentinelUnreachable
from jobqueue.shared.previews import publisher_for
from jobqueue.shared.records import facts_key, result_client, submitted_key
from jobqueue.transport.app import configure_app, create_app
from jobqueue.transport.internals import unacked_index_key
from jobqueue.transport.redis_clients import check_sentinels, master_name, master_url
from jobqueue.transport.redis_urls import is_redis_url, is_sentinel_url, parse_sentinel_url
from jobqueue.up.embedded import broker_answers
from monitor.ingest.raw_reader import event_source
from monitor.web.broker import queue_depths
from monitor.web.deadletters import read_dead_letters
from tests.helpers import finished_order, quick, wait_for
from tests.jobqueue.transport.test_riders import spy_on_sends

pytestmark = pytest.mark.timeout(240)


# -- no server needed --------------------------------------------------------------------------
def test_a_sentinel_url_is_redis_and_names_each_sentinel_with_the_masters_database():
    url = "sentinel://:s3cret@h1:26380/2;sentinel://h2;sentinel://h3:26381"
    assert is_redis_url(url) and is_sentinel_url(url) and not is_sentinel_url("redis://h:6379/0")
    group = parse_sentinel_url(url)
    assert group.sentinels == (("h1", 26380), ("h2", 26379), ("h3", 26381))
    assert (group.db, group.password) == (2, "s3cret")


def test_a_sentinel_url_with_a_part_that_is_no_sentinel_is_refused_by_name():
    with pytest.raises(ConfigError, match="redis://h2:6379"):
        parse_sentinel_url("sentinel://h1:26379;redis://h2:6379")


def test_a_sentinel_broker_without_a_master_name_is_a_config_error_saying_where_to_set_it():
    settings = Settings(broker_url="sentinel://127.0.0.1:26379/0", machine_id="m").resolved()
    with pytest.raises(ConfigError, match="JOBQUEUE_REDIS_MASTER_NAME"):
        configure_app(settings)


@pytest.fixture
def celery_config_module() -> Iterator[str]:
    """A JOBQUEUE_CELERY_CONFIG module with Sentinel transport options of the user's own."""
    name = f"sentinel_conf_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    module.broker_transport_options = {  # type: ignore[attr-defined]
        "master_name": "group-a", "sentinel_kwargs": {"socket_timeout": 0.5}, "visibility_timeout": 999}
    module.result_backend_transport_options = {"master_name": "group-a"}  # type: ignore[attr-defined]
    sys.modules[name] = module
    yield name
    del sys.modules[name]


def test_the_config_modules_transport_options_are_merged_with_ours_not_replaced(celery_config_module: str):
    # Given a Sentinel broker whose master_name is only in the JOBQUEUE_CELERY_CONFIG module
    settings = Settings(broker_url="sentinel://127.0.0.1:26379/0", machine_id="m",
                        celery_config=celery_config_module).resolved()
    # When the app is built
    app = configure_app(settings)
    broker, backend = app.conf.broker_transport_options, app.conf.result_backend_transport_options
    # Then the user's options are kept, ours are on top (the lease needs our visibility timeout)
    assert broker["master_name"] == "group-a" and broker["sentinel_kwargs"] == {"socket_timeout": 0.5}
    assert broker["visibility_timeout"] == settings.visibility_timeout and "priority_steps" in broker
    assert backend["master_name"] == "group-a" and backend["retry_policy"] == {"timeout": 5.0}
    # And our own clients follow the same master, and WAIT for one replica by default
    assert master_name(settings) == "group-a" and settings.wait_replicas == 1
    assert app.conf.broker_transport.endswith(":SentinelTransport")
    assert app.conf.result_backend.startswith("jobqueue.transport.results:SentinelBackend+sentinel://")
    app.close()


def test_two_different_master_names_in_the_config_module_are_refused(celery_config_module: str):
    sys.modules[celery_config_module].result_backend_transport_options = {"master_name": "group-b"}  # type: ignore[attr-defined]
    settings = Settings(broker_url="sentinel://127.0.0.1:26379/0", machine_id="m",
                        celery_config=celery_config_module).resolved()
    with pytest.raises(ConfigError, match="group-a.*group-b"):
        configure_app(settings)


def test_unreachable_sentinels_are_a_clear_error_naming_each_address():
    ports = [free_port(), free_port()]
    url = ";".join(f"sentinel://127.0.0.1:{p}/0" for p in ports)
    settings = Settings(broker_url=url, redis_master_name="mymaster", machine_id="m").resolved()
    with pytest.raises(SentinelUnreachable, match=f"127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}"):
        check_sentinels(url, settings, timeout=0.5)


def test_a_submit_with_no_sentinel_answering_says_which_were_asked_and_sends_nothing():
    # Given a client whose sentinels all refuse connections
    port = free_port()
    settings = Settings(broker_url=f"sentinel://127.0.0.1:{port}/0", redis_master_name="mymaster",
                        machine_id="m").resolved()
    app = create_app(settings)
    # When a job is submitted, Then the error names the sentinel and the master
    with pytest.raises(SentinelUnreachable, match=f"127.0.0.1:{port}.*'mymaster'"):
        submit_job("simulation", quick("never"), app=app)
    app.close()


# -- on a real Sentinel group ------------------------------------------------------------------
@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(workdir=tmp_path_factory.mktemp("sentinel")).start()
    yield group
    group.stop()


@pytest.fixture
def master(group: SentinelGroup) -> Iterator[redis.Redis]:
    """The group's master, flushed for this test."""
    port = group.master_port_now()
    assert port is not None
    client = redis.Redis(port=port)
    client.flushall()
    wait_for(lambda: redis.Redis(port=group.replica_port).dbsize() == 0, 10, what="the replica to follow")
    yield client
    client.close()


@pytest.fixture
def settings(group: SentinelGroup, master: redis.Redis, machine_id: str, tmp_path: Path) -> Settings:
    """conftest's fast-test settings, on the Sentinel group (overrides conftest's)."""
    return Settings(broker_url=group.url(0), redis_master_name=MASTER_NAME, machine_id=machine_id,
                    visibility_timeout=6.0, lease_interval=1.0, health_interval=1.0, status_beat=3.0,
                    heartbeat_interval=1.0, output_dir=str(tmp_path / "outputs"),
                    monitor_db=f"sqlite:///{tmp_path / 'monitor.db'}").resolved()


def test_the_sentinels_name_the_master_our_clients_reach(group: SentinelGroup, settings: Settings):
    assert check_sentinels(settings.broker_url, settings)[1] == group.master_port_now()
    # and `jobqueue up` sees the broker answer (so it starts no embedded Redis in its place)
    assert broker_answers(settings.broker_url, settings=settings)
    assert not broker_answers(settings.broker_url, settings=settings.model_copy(update={"redis_master_name": "nope"}))


def test_a_job_runs_over_sentinel_with_its_records_lease_and_queue_listing(
        app: Any, start_worker: Any, master: redis.Redis, settings: Settings):
    # Given a job submitted over Sentinel before any worker runs
    handle = submit_job("simulation", {"steps": 20, "step_seconds": 0.25, "output": "over sentinel"}, app=app)
    # Then its submit record is on the master, and the monitor's queue listing counts it
    assert master.exists(submitted_key(handle.id))
    assert queue_depths(app, ["simulation"]) == {"simulation": 1}
    # When a real worker takes it
    start_worker("gpu0")
    index = unacked_index_key(app.conf.broker_transport_options)
    first = wait_for(lambda: [s for _, s in master.zrange(index, 0, -1, withscores=True)], 30,
                     what="the job to be delivered")
    # Then its lease is renewed while it runs (the unacked index score moves on)
    wait_for(lambda: any(s > first[0] for _, s in master.zrange(index, 0, -1, withscores=True)), 10,
             what="a lease renewal")
    # And it succeeds, its facts written beside its result
    assert handle.wait(timeout=60)["output"] == "over sentinel"
    assert master.hget(facts_key(handle.id), "finished_at") is not None


def test_all_twenty_priority_levels_hold_over_sentinel(app: Any, start_worker: Any):
    # Given jobs of priority 0, 9 and 5 queued before the worker starts
    ids = [submit_job("simulation", quick(f"p{p}"), priority=p, app=app).id for p in (0, 9, 5)]
    # When one worker takes them one by one
    start_worker("gpu0")
    wait_for(lambda: all(app.AsyncResult(i).state == "SUCCESS" for i in ids), 60, what="all three jobs")
    # Then they ran most urgent first
    assert finished_order(app, ids) == ["p9", "p5", "p0"]


def test_the_monitors_dead_letter_view_reads_the_sentinel_master(settings: Settings, master: redis.Redis):
    master.lpush("simulation.dead", json.dumps({"reason": "undecodable", "job_id": "j1"}))
    (queue,) = read_dead_letters(settings, 5)
    assert (queue["queue"], queue["count"]) == ("simulation", 1)


def test_the_monitors_raw_event_reader_follows_the_sentinel_master(group: SentinelGroup, app: Any):
    url, pattern = event_source(app) or ("", "")
    assert url == app.settings.broker_url and pattern.startswith("/0.celeryev")
    assert master_url(url, app.settings) == f"redis://127.0.0.1:{group.master_port_now()}/0"


def test_previews_are_stored_through_the_sentinel_masters_client(app: Any, master: redis.Redis):
    told: list[int] = []
    publisher = publisher_for(app, "job-p", told.append)
    assert publisher is not None
    frame = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(frame, format="PNG")
    publisher.offer(frame.getvalue(), "image/png")
    wait_for(lambda: told == [1], 5, what="the preview to be stored")
    assert master.hget("jobqueue-preview-job-p", "mime") == b"image/png"
    publisher.close()


def test_a_submit_waits_for_the_replica_and_says_which_job_when_it_never_confirms(
        group: SentinelGroup, settings: Settings, master: redis.Redis):
    # Given a client on the group with WAIT on (the default with Sentinel), 0.3 s to confirm
    app = create_app(settings.model_copy(update={"redis_wait_timeout": 0.3}))
    before = master.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    # When a job is submitted with the replica answering
    submit_job("simulation", quick("replicated"), app=app)
    # Then a WAIT went with it
    assert master.info("commandstats")["cmdstat_wait"]["calls"] > before
    # When the replica is frozen (connected, never confirming)
    group.processes["replica" if group.master_port_now() == group.master_port else "master"].signal(signal.SIGSTOP)
    try:
        with pytest.raises(NotReplicated) as raised:
            submit_job("simulation", quick("unconfirmed"), app=app)
    finally:
        group.processes["replica" if group.master_port_now() == group.master_port else "master"].signal(
            signal.SIGCONT)
    # Then the error names the job, whose message is on the master all the same
    assert raised.value.job_id and master.exists(submitted_key(raised.value.job_id))
    assert result_client(app) is not None
    app.close()


def test_over_sentinel_a_submits_record_message_and_wait_leave_in_one_write(
        settings: Settings, master: redis.Redis, monkeypatch: pytest.MonkeyPatch):
    # Given a client on the group (broker and result backend: the same master, WAIT on)
    app = create_app(settings)
    submit_job("simulation", quick("warm"), queue="gpu7", app=app)
    sends = spy_on_sends(monkeypatch)
    # When a job is submitted
    job = submit_job("simulation", quick("one"), queue="gpu7", app=app)
    # Then its record, its message and the WAIT went in one write, in that order
    [write] = sends.holding(submitted_key(job.id))
    marks = [write.index(n) for n in (b"MULTI", submitted_key(job.id).encode(), b"LPUSH", b"EXEC", b"WAIT")]
    assert marks == sorted(marks)
    assert master.exists(submitted_key(job.id))
    app.close()
