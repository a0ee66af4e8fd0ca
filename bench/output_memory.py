"""Large outputs: a worker moves an N MB output to S3 without holding it (target: its RSS grows
by less than 64 MB for a 500 MB file).

A real worker (``celery -A jobqueue worker``, the ``simulation`` connector) runs a job whose
payload asks for one video of ``--mb`` MiB (``{"files": [{"kind": "video", "mb": N}]}``: a real
VP9 clip padded to size, made chunk by chunk); the output store is an S3 bucket on moto's
server (``JOBQUEUE_OUTPUT_URL=s3://...``), so the file goes through s3fs's multipart upload as
it would to AWS, MinIO or R2. A warm-up job with a 1 MiB file first loads every module of the
path (s3fs, botocore); then the worker's RSS (its process and all its children, from /proc) is
sampled every 20 ms while the big job runs. The bench checks the object's size in the bucket.

    python -m bench.output_memory --mb 500
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import RedisServer, bench_settings, fmt_table, wait_worker_ready, worker_process
from bench.s3 import MotoS3Server
from jobqueue import submit_job
from jobqueue.transport.app import create_app

#: The target of issue 25: growth of the worker's RSS while it stores a 500 MB output.
LIMIT_MB = 64.0


class RssSampler:
    """Samples the RSS of a process and all its descendants on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def tree_mb(self) -> float:
        """RSS of the process tree now, in MiB."""
        root = psutil.Process(self.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / (1 << 20)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.tree_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def store_one(app: Any, pid: int, mb: float, timeout: float = 900.0) -> dict[str, Any]:
    """Run one job making a video of ``mb`` MiB; return its result entry and the worker's RSS
    before it (``baseline``), its peak during it, and the seconds it took."""
    sampler = RssSampler(pid)
    baseline = sampler.tree_mb()
    started = time.monotonic()
    with sampler:
        handle = submit_job("simulation", {"files": [{"kind": "video", "mb": mb, "name": "big.mp4"}]}, app=app)
        result = handle.wait(timeout=timeout)
    [entry] = [f for f in result["files"] if f["name"] == "big.mp4"]
    return {"entry": entry, "baseline": baseline, "peak": sampler.peak, "seconds": time.monotonic() - started}


def run(workdir: Path, mb: float) -> dict[str, Any]:
    redis_server = RedisServer(workdir=workdir).start()
    s3 = MotoS3Server(log_path=workdir / "moto.log").start()
    bucket = s3.bucket()
    settings = bench_settings(redis_server.url(), workdir, output_url=f"s3://{bucket}/bench")
    node = f"outputs@{socket.gethostname()}"
    worker = worker_process(settings, "simulation", workdir / "worker.log", ("-n", node),
                            JOBQUEUE_CONNECTORS="simulation", **s3.aws_env()).start()
    app = create_app(settings)
    try:
        wait_worker_ready(app, node, worker)
        store_one(app, worker.pid, 1.0)  # warm-up: every module of the path loaded
        measured = store_one(app, worker.pid, mb)
        key = measured["entry"]["url"].split(f"s3://{bucket}/", 1)[1]
        stored = s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"]
        return {"MB": mb, "stored bytes": stored, "seconds": round(measured["seconds"], 1),
                "MB/s": round(mb / measured["seconds"], 1), "RSS before MB": round(measured["baseline"], 1),
                "RSS peak MB": round(measured["peak"], 1),
                "RSS growth MB": round(measured["peak"] - measured["baseline"], 1)}
    finally:
        app.close()
        worker.stop()
        s3.stop()
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=500.0, help="size of the output in MiB")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jq-bench-outputs-") as tmp:
        row = run(Path(tmp), args.mb)
    print(fmt_table([row], list(row)))
    ok = row["RSS growth MB"] < LIMIT_MB and row["stored bytes"] == int(args.mb * (1 << 20))
    print(f"{'PASS' if ok else 'FAIL'}: RSS growth {row['RSS growth MB']} MB (limit {LIMIT_MB:.0f} MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
