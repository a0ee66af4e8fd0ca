"""An S3 store for drills and tests: moto's S3 server (``moto[server]``) as a real process.

The workers and the monitor reach it exactly as they would reach AWS S3, MinIO or R2: through
s3fs/botocore with ``AWS_ENDPOINT_URL`` and a key pair (:meth:`MotoS3Server.aws_env`).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from bench.common import Process, child_env, free_port, wait_until

#: Any key pair works against moto; these are what the child processes get.
ACCESS_KEY, SECRET_KEY, REGION = "testing", "testing", "us-east-1"


class MotoS3Server:
    """``python -m moto.server`` on a free port; :meth:`bucket` creates a fresh bucket."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_path = log_path
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point s3fs/botocore at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}

    def client(self) -> Any:
        """A boto3 S3 client on this server (for checks from the test or drill itself)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def start(self, timeout: float = 30.0) -> MotoS3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self.process = Process(cmd, child_env(), self.log_path).start()
        client = self.client()

        def up() -> bool:
            if self.process is None or not self.process.alive():
                raise RuntimeError(f"moto server exited; log: {self.process.log_text()[-2000:] if self.process else ''}")
            try:
                client.list_buckets()
                return True
            except Exception:  # not listening yet
                return False

        wait_until(up, timeout, interval=0.2, what=f"moto S3 server on {self.endpoint}")
        return self

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name by default) and return its name."""
        name = name or f"jobqueue-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        reply = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in reply.get("Contents", [])]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
