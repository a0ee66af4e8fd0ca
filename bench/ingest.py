"""Event ingestion: how many events each consumer keeps at rising offered rates.

One publisher puts a realistic pre-encoded event mix (see :mod:`bench.events_mix`) straight
onto Redis pub/sub at a controlled rate -- the way kombu's fanout does, because a Python
``Dispatcher`` tops out near 3,000 events/s here. Three consumers of the same stream run in
their own processes, side by side:

* ``jobqueue``: our monitor's collector + writer + SQLite store in a child process; counted
  from what its writer committed. Its row also says when the last job was final in the store
  (``final lag s``: from the last event published to the moment every job the stream ends is
  ``completed`` in the SQLite file, polled every 0.25 s) and the process's RSS at its peak
  and once drained (``rss peak MB`` / ``rss after MB``).
* ``bare``: Celery's ``EventReceiver`` + ``State``, doing nothing else; counted in-process.
* ``flower``: Flower 2.x (``celery flower``), counted from ``flower_events_total`` on its
  ``/metrics`` (Flower counts task events only there, so it is compared against those).
* ``jobqueue-base``: our monitor from another source tree (``--baseline-tree PATH``, e.g. a
  worktree of an older commit) beside ``jobqueue``, on the same stream: before and after a
  change, side by side. Its child process imports everything (bench, jobqueue, monitor) from
  that tree; the store's Alembic revision, printed after the step, shows which code ran.
* ``jobqueue-python`` / ``jobqueue-hiredis``: our consumer with redis-py's pure-Python reply
  parser (hiredis kept out of its process) and with hiredis (the ``[fast]`` extra), to measure
  what hiredis brings: ``--consumers jobqueue-python,jobqueue-hiredis``; ``reader-python`` /
  ``reader-hiredis`` run the monitor's raw reader alone (no decoding, no writer).

Every row also says how much CPU the consumer's process used (``cpu s``, user + system, from
the warm-up to the end of the step), that per 100,000 events, and the largest resident memory
sampled (``rss peak MB``, every 0.25 s). ``--mix plain`` offers a plain Celery app's tasks
with their args and kwargs instead of jobqueue jobs (:mod:`bench.events_plain`).

Every rate step gets fresh consumers and a private Redis server with stock settings (its
``client-output-buffer-limit pubsub 32mb 8mb 60`` is what drops a slow consumer).

    python -m bench.ingest --rates 2000,4000,7000,12000 --events 200000
    python -m bench.ingest --rates 7000,12000 --mix plain --consumers jobqueue-base,jobqueue \
        --baseline-tree /work/wt/base28
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import (
    Process,
    RedisServer,
    bench_settings,
    child_env,
    encode_event,
    event_channel,
    fmt_table,
    free_port,
    rss_mb,
)
from bench.events_mix import MIXES, EncodedStream, build_stream

#: Consumers that can take part. ``jobqueue-python`` / ``jobqueue-hiredis``: our consumer with
#: redis-py's pure-Python reply parser / with hiredis (the ``[fast]`` extra), side by side.
ALL_CONSUMERS = ("jobqueue", "bare", "flower", "jobqueue-python", "jobqueue-hiredis", "reader-python",
                 "reader-hiredis", "jobqueue-base")
#: Seconds without any count moving after which a consumer is considered drained. Our writer
#: moves its counts once per batch (up to 20,000 events, ``monitor.ingest.writer.MAX_BATCH``):
#: on a loaded machine one batch can take several seconds, so this must be well above that.
SETTLE_SECONDS = 15.0


# -- consumers ---------------------------------------------------------------------------------
def _bare_main(url: str, total: Any, tasks: Any) -> None:
    """Child process: Celery's bare Receiver + State, counting events, reconnecting."""
    from celery import Celery

    app = Celery("bench-bare", broker=url, set_as_current=False)
    state = app.events.State()

    def on_event(event: dict[str, Any]) -> None:
        state.event(event)
        total.value += 1
        if event["type"].startswith("task-"):
            tasks.value += 1

    # Reconnect when Redis drops the subscription (what Flower and our collector do too);
    # a bare capture() would simply die there.
    while True:
        try:
            with app.connection_for_read() as conn:
                receiver = app.events.Receiver(conn, handlers={"*": on_event})
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception:
            time.sleep(0.1)


class BareConsumer:
    """Celery's ``EventReceiver`` + ``State`` in a child process."""

    name = "bare"
    counts_task_events_only = False

    def __init__(self, url: str, workdir: Path) -> None:
        ctx = mp.get_context("spawn")
        self._total = ctx.RawValue("q", 0)
        self._tasks = ctx.RawValue("q", 0)
        self._proc = ctx.Process(target=_bare_main, args=(url, self._total, self._tasks), daemon=True)

    def start(self) -> None:
        self._proc.start()

    def count(self) -> int:
        return int(self._total.value)

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.join(10)


_FLOWER_EVENTS = re.compile(r"^flower_events_total\{[^}]*\}\s+([0-9.eE+]+)", re.M)


class FlowerConsumer:
    """Flower 2.x (``celery -A jobqueue flower``), counted from ``/metrics``."""

    name = "flower"
    counts_task_events_only = True

    def __init__(self, url: str, workdir: Path) -> None:
        self.port = free_port()
        settings = bench_settings(url, workdir)
        cmd = [sys.executable, "-m", "celery", "-A", "jobqueue", "flower", f"--port={self.port}",
               "--address=127.0.0.1", "--inspect_timeout=1000"]
        self.process = Process(cmd, child_env(settings), workdir / "flower.log")

    def start(self) -> None:
        self.process.start()

    def count(self) -> int:
        try:
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except requests.RequestException:
            return 0
        return int(sum(float(m) for m in _FLOWER_EVENTS.findall(text)))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


def _collector_main(url: str, db_url: str, counts: Any, stop: Any, parser: str = "auto") -> None:
    """Child process: our monitor's collector + writer + SQLite store, nothing else."""
    import redis.utils

    if parser != "auto" and redis.utils.HIREDIS_AVAILABLE != (parser == "hiredis"):
        raise RuntimeError(f"consumer wants the {parser} parser, hiredis available: {redis.utils.HIREDIS_AVAILABLE}")
    from jobqueue.config import Settings
    from monitor.ingest.collector import EventCollector
    from monitor.ingest.hub import ChangeHub
    from monitor.ingest.writer import Writer
    from monitor.metrics.totals import Totals
    from monitor.store import Store
    from monitor.web.broker import monitor_celery_app

    settings = Settings(broker_url=url, result_backend=url, monitor_db=db_url,
                        monitor_keep_jobs=10_000_000).resolved()
    app = monitor_celery_app(settings)
    store = Store.from_settings(settings)
    writer = Writer(store, ChangeHub(), totals=Totals(store)).start()
    collector = EventCollector(app, writer).start()

    def track_committed() -> None:
        # Persisted = events handed to the writer before a marker, once the marker came out
        # of the writer's queue (so all of them are committed), minus dropped/failed ones.
        while not stop.is_set():
            handed = collector.received
            if writer.wait_idle(600):
                c = writer.counts
                counts[0] = handed - c["dropped"] - c["errors"]
            stop.wait(0.1)

    threading.Thread(target=track_committed, daemon=True).start()
    while not stop.wait(0.1):
        counts[1] = writer.backlog
        counts[2] = writer.counts["dropped"]
        counts[3] = collector.received
    collector.stop()
    writer.stop()
    store.close()


class JobqueueConsumer:
    """Our monitor's collector + writer + SQLite store (monitor.ingest.collector/writer/store) in a
    child process; counts what the writer committed to SQLite."""

    name = "jobqueue"
    counts_task_events_only = False
    #: redis-py reply parser of the child: "auto" (hiredis when installed), "python", "hiredis".
    parser = "auto"

    def __init__(self, url: str, workdir: Path) -> None:
        ctx = mp.get_context("spawn")
        self.workdir = workdir
        self.db_path = workdir / f"monitor-{uuid.uuid4().hex[:6]}.db"
        self._counts = ctx.RawArray("q", 4)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_collector_main, daemon=True,
                                 args=(url, f"sqlite:///{self.db_path}", self._counts, self._stop, self.parser))

    def start(self) -> None:
        if self.parser == "auto":
            self._proc.start()
            return
        if self.parser == "hiredis" and importlib.util.find_spec("hiredis") is None:
            raise SystemExit("jobqueue-hiredis needs hiredis: pip install 'jobqueue[fast]'")
        # The child imports redis before it runs anything of ours: to keep hiredis out of the
        # pure-Python one, a module named hiredis that refuses to import goes first on its
        # path (a spawned child starts from the parent's sys.path, taken at start()).
        if self.parser == "python":
            blocker = self.workdir / "no-hiredis"
            blocker.mkdir(exist_ok=True)
            (blocker / "hiredis.py").write_text('raise ImportError("hiredis kept out for the benchmark")\n')
            sys.path.insert(0, str(blocker))
            try:
                self._proc.start()
            finally:
                sys.path.remove(str(blocker))
        else:
            self._proc.start()

    def count(self) -> int:
        return int(self._counts[0])

    def completed_jobs(self) -> int:
        """Jobs the store holds as completed (read from the SQLite file; 0 before it exists)."""
        import sqlite3

        if not self.db_path.exists():
            return 0
        try:
            with sqlite3.connect(self.db_path, timeout=5) as db:
                return int(db.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()[0])
        except sqlite3.Error:
            return 0

    def store_facts(self) -> str:
        """The store's Alembic revision (which code wrote it) and its size on disk."""
        import sqlite3

        with sqlite3.connect(self.db_path) as db:
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        size = sum(f.stat().st_size for f in self.workdir.glob(f"{self.db_path.name}*"))
        return f"revision {revision}, {size / 1e6:.1f} MB on disk"

    def progress(self) -> tuple[int, ...]:
        """Moves while anything is still happening (received, backlog, committed)."""
        return tuple(int(v) for v in self._counts)

    def stats(self) -> dict[str, int]:
        return {"backlog": int(self._counts[1]), "dropped": int(self._counts[2]), "received": int(self._counts[3])}

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(20)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


def _reader_main(url: str, count: Any, parser: str) -> None:
    """Child process: only the monitor's raw event reader, counting payloads (no decoding, no
    writer): what the reply parser costs the thread that must keep up with Redis."""
    import redis.utils

    from monitor.ingest.raw_reader import RawEventReader

    if redis.utils.HIREDIS_AVAILABLE != (parser == "hiredis"):
        raise RuntimeError(f"reader wants the {parser} parser, hiredis available: {redis.utils.HIREDIS_AVAILABLE}")

    def on_message(_raw: bytes) -> None:
        count.value += 1

    db = redis.ConnectionPool.from_url(url).connection_kwargs.get("db", 0)
    while True:
        try:
            RawEventReader(url, f"/{db}.celeryev/*", on_message).run()
        except Exception:
            time.sleep(0.1)


class ReaderConsumer(JobqueueConsumer):
    """The raw reader alone (``reader-python`` / ``reader-hiredis``)."""

    def __init__(self, url: str, workdir: Path) -> None:
        ctx = mp.get_context("spawn")
        self.workdir = workdir
        self._count = ctx.RawValue("q", 0)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_reader_main, daemon=True, args=(url, self._count, self.parser))

    def count(self) -> int:
        return int(self._count.value)

    def progress(self) -> tuple[int, ...]:
        return (self.count(),)

    def stats(self) -> dict[str, int]:
        return {"backlog": 0, "dropped": 0, "received": self.count()}

    def stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(5)


class BaselineConsumer(JobqueueConsumer):
    """Our consumer run from another source tree (``--baseline-tree``): the child process starts
    with that tree first on its path, so it imports bench, jobqueue and monitor from there."""

    name = "jobqueue-base"
    #: The source tree (set from ``--baseline-tree``).
    tree: Path | None = None

    def start(self) -> None:
        if self.tree is None:
            raise SystemExit("jobqueue-base needs --baseline-tree PATH")
        sys.path.insert(0, str(self.tree))
        try:
            self._proc.start()
        finally:
            sys.path.remove(str(self.tree))


class PythonReader(ReaderConsumer):
    name = "reader-python"
    parser = "python"


class HiredisReader(ReaderConsumer):
    name = "reader-hiredis"
    parser = "hiredis"


class PythonParserConsumer(JobqueueConsumer):
    """Our consumer with redis-py's pure-Python parser (hiredis kept out)."""

    name = "jobqueue-python"
    parser = "python"


class HiredisConsumer(JobqueueConsumer):
    """Our consumer with hiredis (``pip install 'jobqueue[fast]'``)."""

    name = "jobqueue-hiredis"
    parser = "hiredis"


CONSUMERS: dict[str, Callable[[str, Path], Any]] = {
    "bare": BareConsumer,
    "flower": FlowerConsumer,
    "jobqueue": JobqueueConsumer,
    "jobqueue-python": PythonParserConsumer,
    "jobqueue-hiredis": HiredisConsumer,
    "reader-python": PythonReader,
    "reader-hiredis": HiredisReader,
    "jobqueue-base": BaselineConsumer,
}


# -- publishing --------------------------------------------------------------------------------
def publish(client: redis.Redis, messages: list[tuple[str, bytes]], rate: float,
            max_batch: int = 2000) -> float:
    """Publish ``messages`` at ``rate`` per second (pipelined in small batches); return the
    seconds it took."""
    start = time.perf_counter()
    sent = 0
    total = len(messages)
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1, sent + max_batch)
        if due <= sent:
            time.sleep(0.001)
            continue
        pipe = client.pipeline(transaction=False)
        for channel, body in messages[sent:due]:
            pipe.publish(channel, body)
        pipe.execute()
        sent = due
    return time.perf_counter() - start


def _warm_up(client: redis.Redis, db: int, consumers: list[Any], timeout: float = 90.0) -> None:
    """Publish one task event every 50 ms until every consumer has counted one."""
    deadline = time.monotonic() + timeout
    while True:
        event: dict[str, Any] = {"type": "task-received", "uuid": f"warmup-{uuid.uuid4()}", "name": "warmup",
                 "hostname": "warmup@bench", "timestamp": time.time(), "clock": 0, "utcoffset": 0, "pid": 1}
        client.publish(event_channel(db, event["type"]), encode_event(event))
        if all(c.count() > 0 for c in consumers):
            return
        if time.monotonic() > deadline:
            missing = [c.name for c in consumers if c.count() == 0]
            raise TimeoutError(f"consumers never received a warm-up event: {missing}")
        time.sleep(0.05)


def _settled_counts(consumers: list[Any], quiet: float = 1.0, timeout: float = 30.0) -> dict[str, int]:
    """Counts once none has moved for ``quiet`` seconds."""
    last = {c.name: c.count() for c in consumers}
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = {c.name: c.count() for c in consumers}
        if now != last:
            last, since = now, time.monotonic()
    return last


def run_step(rate: float, events: int, consumer_names: list[str], *, workers: int = 50,
             progress_steps: int = 10, drain_timeout: float = 120.0, verbose: bool = True,
             mix: str = "jobqueue", settle: float = SETTLE_SECONDS) -> list[dict[str, Any]]:
    """One rate step: fresh Redis and consumers, ``events`` events offered at ``rate``/s."""
    db = 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    (workdir / "redis").mkdir()
    server = RedisServer(workdir=workdir / "redis").start()
    url = server.url(db)
    client = redis.Redis.from_url(url)
    consumers = [CONSUMERS[name](url, workdir) for name in consumer_names]
    try:
        encode_started = time.perf_counter()
        stream: EncodedStream = build_stream(events, rate, time.time() + 30, db=db, workers=workers,
                                             progress_steps=progress_steps, mix=mix)
        if verbose:
            print(f"  encoded {events:,} events in {time.perf_counter() - encode_started:.1f} s "
                  f"({stream.jobs:,} jobs, {stream.task_events:,} task events)", flush=True)
        for consumer in consumers:
            consumer.start()
        _warm_up(client, db, consumers)
        baseline = _settled_counts(consumers)
        cpu_start = {c.name: _cpu_seconds(c.pid) for c in consumers}
        samples: dict[str, list[tuple[float, int]]] = {c.name: [] for c in consumers}
        started = time.monotonic()
        published: dict[str, float] = {}
        publisher = threading.Thread(
            target=lambda: published.update(seconds=publish(client, stream.messages, rate), ended=time.monotonic()),
            daemon=True)
        publisher.start()
        peak: dict[str, int] = {c.name: 0 for c in consumers}
        rss_peak: dict[str, float] = {c.name: 0.0 for c in consumers}
        finals = _FinalWatch(consumers, stream.by_type.get("task-succeeded", 0))
        deadline = None
        last_change = time.monotonic()
        last_counts: dict[str, Any] = {}
        expected = {c.name: stream.task_events if c.counts_task_events_only else events for c in consumers}
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.25)
            now = time.monotonic()
            counts = {c.name: c.count() - baseline[c.name] for c in consumers}
            for consumer in consumers:
                samples[consumer.name].append((now - started, counts[consumer.name]))
                stats = getattr(consumer, "stats", None)
                if stats is not None:
                    peak[consumer.name] = max(peak[consumer.name], stats()["backlog"])
                rss_peak[consumer.name] = max(rss_peak[consumer.name], _rss(consumer.pid))
            if publisher.is_alive():
                continue
            finals.poll(published["ended"])
            if deadline is None:
                deadline = now + drain_timeout
                if verbose:
                    print(f"  published at {events / published['seconds']:,.0f}/s for "
                          f"{published['seconds']:.1f} s; draining", flush=True)
            moving = {c.name: _progress(c) for c in consumers}
            if moving != last_counts:
                last_counts, last_change = moving, now
            if (all(counts[n] >= expected[n] for n in counts) and finals.done) or now - last_change > settle:
                break
        cpu_used = {c.name: _cpu_seconds(c.pid) - cpu_start[c.name] for c in consumers}
        rss_after = {c.name: _rss(c.pid) for c in consumers}
        seconds = published["seconds"]
        offered = events / seconds
        drops = _pubsub_drops(server)
        rows = []
        for consumer in consumers:
            expected_n = stream.task_events if consumer.counts_task_events_only else events
            series = samples[consumer.name]
            kept = series[-1][1] if series else 0
            done_at = next((t for t, v in series if v >= kept), seconds)
            rows.append({
                "offered/s": round(offered),
                "consumer": consumer.name,
                "expected": expected_n,
                "kept": kept,
                "lost": max(0, expected_n - kept),
                "kept %": 100.0 * kept / expected_n if expected_n else float("nan"),
                "processed/s": round(kept / max(done_at, seconds)),
                "drain s": round(max(0.0, done_at - seconds), 1),
                "peak backlog": peak[consumer.name] if hasattr(consumer, "stats") else "",
                "cpu s": round(cpu_used[consumer.name], 1),
                "cpu s/100k": round(cpu_used[consumer.name] * 100_000 / max(kept, 1), 2),
                "final lag s": finals.lag.get(consumer.name, ""),
                "rss peak MB": round(rss_peak[consumer.name]),
                "rss after MB": round(rss_after[consumer.name]),
            })
        if verbose:
            print(f"  redis dropped {drops} pub/sub connection(s) for output-buffer limits", flush=True)
        for consumer in consumers:
            if isinstance(consumer, JobqueueConsumer) and not isinstance(consumer, ReaderConsumer):
                consumer.stop()
                print(f"  {consumer.name} store: {consumer.completed_jobs():,} jobs completed of "
                      f"{stream.by_type.get('task-succeeded', 0):,} in the stream; {consumer.store_facts()}",
                      flush=True)
        for row in rows:
            row["redis drops (all)"] = drops
        return rows
    finally:
        for consumer in consumers:
            consumer.stop()
        client.close()
        server.stop()


class _FinalWatch:
    """When every job the stream ends is final in each jobqueue consumer's store: ``lag``
    maps a consumer to the seconds from the last event published to that moment (polled)."""

    def __init__(self, consumers: list[Any], expected: int) -> None:
        self.stores = [c for c in consumers if isinstance(c, JobqueueConsumer) and not isinstance(c, ReaderConsumer)]
        self.expected = expected
        self.lag: dict[str, float] = {}

    @property
    def done(self) -> bool:
        return len(self.lag) == len(self.stores)

    def poll(self, published_at: float) -> None:
        for consumer in self.stores:
            if consumer.name not in self.lag and consumer.completed_jobs() >= self.expected:
                self.lag[consumer.name] = round(time.monotonic() - published_at, 1)


def _rss(pid: int) -> float:
    """RSS of ``pid`` in MB (0 when it is gone)."""
    try:
        return rss_mb(pid) if pid else 0.0
    except OSError:
        return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children so far (0 if gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            total += sum(child.cpu_times()[:2])
        return float(total)
    except psutil.Error:
        return 0.0


def _progress(consumer: Any) -> Any:
    progress = getattr(consumer, "progress", None)
    return progress() if progress is not None else consumer.count()


def _pubsub_drops(server: RedisServer) -> int:
    """How many clients Redis closed for overrunning their output buffer (from its log)."""
    log = server.dir / "redis.log"
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count("output buffer limits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000,4000,7000,12000", help="offered events/s, comma separated")
    parser.add_argument("--events", type=int, default=200_000, help="events per rate step (>= 200k for the table)")
    parser.add_argument("--consumers", default=",".join(ALL_CONSUMERS))
    parser.add_argument("--progress-steps", type=int, default=10)
    parser.add_argument("--mix", choices=MIXES, default="jobqueue",
                        help="the events offered: jobqueue jobs, or a plain Celery app's tasks with args")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="source tree the jobqueue-base consumer runs from (e.g. a worktree of an older commit)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="most seconds to wait for the consumers after the publisher stopped")
    parser.add_argument("--settle-seconds", type=float, default=SETTLE_SECONDS,
                        help="a consumer whose counts did not move for this long is done (raise it on a loaded "
                             "machine, where one writer batch can take longer)")
    args = parser.parse_args(argv)
    if args.baseline_tree is not None:
        if not (args.baseline_tree / "monitor" / "ingest" / "collector.py").is_file():
            parser.error(f"--baseline-tree {args.baseline_tree}: no monitor/ingest/collector.py there")
        BaselineConsumer.tree = args.baseline_tree.resolve()
    names = [n.strip() for n in args.consumers.split(",") if n.strip()]
    unknown = set(names) - set(ALL_CONSUMERS)
    if unknown:
        parser.error(f"unknown consumer(s): {sorted(unknown)}")
    rows: list[dict[str, Any]] = []
    for rate in (float(r) for r in args.rates.split(",")):
        print(f"rate step {rate:,.0f} events/s, {args.events:,} events, consumers {names}", flush=True)
        rows.extend(run_step(rate, args.events, names, progress_steps=args.progress_steps, mix=args.mix,
                             drain_timeout=args.drain_timeout, settle=args.settle_seconds))
        print(fmt_table(rows[-len(names):], list(rows[-1])), flush=True)
    print()
    print(fmt_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
