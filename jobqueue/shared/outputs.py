"""The output store: where every connector writes a job's files, and where the monitor reads them.

A fleet shares no disk, so outputs go to one store all machines reach: an fsspec URL
(``JOBQUEUE_OUTPUT_URL``), by default the local ``JOBQUEUE_OUTPUT_DIR``. ``s3://bucket/prefix``
goes through s3fs, with endpoint and credentials from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``...), so
MinIO, R2 and Ceph work the same way. A job's file ``name`` lives at
``<store>/<job id>/<name>``; the job's result lists it with its store URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from jobqueue.config import Settings
from jobqueue.errors import ConfigError

#: Bytes read per chunk when streaming a stored file.
CHUNK_SIZE = 1 << 16
#: Longest file (or job id) name served or written: far below any filesystem's limit.
MAX_NAME_LENGTH = 200


def is_safe_name(name: str) -> bool:
    """True for a plain file (or job id) name: no path separator, no ``..``, no hidden name.

    Both the writer and the monitor check it, so no name ever addresses anything outside
    ``<store>/<job id>/``.
    """
    return 0 < len(name) <= MAX_NAME_LENGTH and "/" not in name and "\\" not in name and "\x00" not in name \
        and ".." not in name and not name.startswith(".")


class OutputStore:
    """One fsspec file system and root under which each job has a folder of files."""

    def __init__(self, url: str) -> None:
        from fsspec.core import url_to_fs

        try:
            self.fs, root = url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"JOBQUEUE_OUTPUT_URL={url!r}: {exc}") from exc
        self.url = url
        self.root = str(root).rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputStore:
        """The store ``settings`` name: ``output_url``, else the local ``output_dir``."""
        return cls(settings.output_url or settings.output_dir)

    @property
    def is_local(self) -> bool:
        """True when the store is this machine's file system (no sharing across machines)."""
        protocol = self.fs.protocol
        return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def path(self, job_id: str, name: str) -> str:
        """The file system path of ``name`` of job ``job_id`` (names checked, never trusted)."""
        if not is_safe_name(job_id) or not is_safe_name(name):
            raise ValueError(f"not a plain file name: {job_id!r}/{name!r}")
        return f"{self.root}/{job_id}/{name}"

    def url_for(self, job_id: str, name: str) -> str:
        """The store URL of a job's file (``s3://bucket/prefix/<job id>/<name>``, ``file://...``)."""
        return str(self.fs.unstrip_protocol(self.path(job_id, name)))

    def exists(self, job_id: str, name: str) -> bool:
        """True when the job already has a file called ``name``."""
        return bool(self.fs.exists(self.path(job_id, name)))

    def save(self, job_id: str, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Write ``chunks`` as the job's file ``name``; return what the job's result lists
        about it: ``name``, ``url`` (store URL), ``size`` and, on a local store, ``path``."""
        path = self.path(job_id, name)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        size = 0
        with self.fs.open(path, "wb") as fh:
            for chunk in chunks:
                if chunk:
                    fh.write(chunk)
                    size += len(chunk)
        entry: dict[str, Any] = {"name": name, "url": self.url_for(job_id, name), "size": size}
        if self.is_local:
            entry["path"] = os.path.realpath(path)
        return entry

    def size(self, job_id: str, name: str) -> int | None:
        """The size of a stored regular file, or None when there is no such file."""
        try:
            info = self.fs.info(self.path(job_id, name))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return int(info.get("size") or 0)

    def names(self, job_id: str) -> list[str]:
        """The names of the job's stored files, sorted (empty when it has none)."""
        if not is_safe_name(job_id):
            raise ValueError(f"not a plain job id: {job_id!r}")
        try:
            entries = self.fs.ls(f"{self.root}/{job_id}", detail=True)
        except FileNotFoundError:
            return []
        found = (str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
        return sorted(name for name in found if is_safe_name(name))

    def stream(self, job_id: str, name: str) -> Iterator[bytes]:
        """The file's bytes, chunk by chunk (for a streaming HTTP response)."""
        with self.fs.open(self.path(job_id, name), "rb") as fh:
            while True:
                chunk = fh.read(CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk

    def signed_url(self, job_id: str, name: str, seconds: float) -> str | None:
        """A presigned HTTP(S) URL valid ``seconds``, or None when the store cannot sign."""
        try:
            url = self.fs.sign(self.path(job_id, name), expiration=int(seconds))
        except NotImplementedError:
            return None
        return str(url) if str(url).startswith(("http://", "https://")) else None


def save_output(settings: Settings, job_id: str, name: str, chunks: Iterable[bytes],
                *, alternative: str = "") -> dict[str, Any]:
    """Store one output file of a job; every connector writes its outputs through here.

    ``name`` is reduced to its base name; when the job already has a file of that name, it is
    stored as ``<alternative>_<name>`` (e.g. the node id) instead. Returns the result entry
    (see :meth:`OutputStore.save`).
    """
    store = OutputStore.from_settings(settings)
    base = os.path.basename(name.replace("\\", "/")).replace("..", "_").lstrip(".") or "output"
    if alternative and store.exists(job_id, base):
        base = f"{alternative}_{base}"
    return store.save(job_id, base, chunks)
