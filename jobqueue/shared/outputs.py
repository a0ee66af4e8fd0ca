"""The output store: where every connector writes a job's files, and where the monitor reads them.

A fleet shares no disk, so outputs go to one store all machines reach: an fsspec URL
(``JOBQUEUE_OUTPUT_URL``), by default the local ``JOBQUEUE_OUTPUT_DIR``. ``s3://bucket/prefix``
goes through s3fs, with endpoint and credentials from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``...), so
MinIO, R2 and Ceph work the same way. A job's file ``name`` lives at
``<store>/<job id>/<name>``; the job's result lists it with its store URL.

Files of any kind and size (a 500 MB video) move in chunks and are never held whole: a writer
hands :func:`save_output` an iterable of chunks (``requests``' ``iter_content``, a generator),
and a remote store buffers at most one multipart part (:data:`WRITE_BLOCK`) of it; the monitor
reads a byte range (:meth:`OutputStore.stream`) without reading what comes before it.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterable, Iterator
from typing import Any

from jobqueue.config import Settings
from jobqueue.errors import ConfigError

#: Bytes read per chunk when streaming a stored file.
CHUNK_SIZE = 1 << 16
#: Bytes a remote store (S3) buffers before it uploads them as one part (S3's smallest part),
#: and reads ahead of a reader.
WRITE_BLOCK = 5 << 20
#: Longest file (or job id) name served or written: far below any filesystem's limit.
MAX_NAME_LENGTH = 200


#: Content types of the output kinds services make (``mimetypes`` misses or varies on some).
CONTENT_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
    "mp4": "video/mp4", "webm": "video/webm", "mov": "video/quicktime", "mkv": "video/x-matroska",
    "wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg", "opus": "audio/ogg",
    "m4a": "audio/mp4", "glb": "model/gltf-binary", "gltf": "model/gltf+json", "obj": "model/obj",
    "json": "application/json", "txt": "text/plain; charset=utf-8",
}


def content_type(name: str) -> str:
    """The Content-Type of an output file, from its extension (``application/octet-stream``
    when unknown)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return CONTENT_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


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
        protocol = self.fs.protocol
        self._local = "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputStore:
        """The store ``settings`` name: ``output_url``, else the local ``output_dir``."""
        return cls(settings.output_url or settings.output_dir)

    @property
    def is_local(self) -> bool:
        """True when the store is this machine's file system (no sharing across machines)."""
        return self._local

    def _block(self) -> dict[str, Any]:
        """Open options bounding what a remote file buffers (s3fs's default block is 50 MB)."""
        return {} if self.is_local else {"block_size": WRITE_BLOCK}

    def path(self, job_id: str, name: str) -> str:
        """The file system path of ``name`` of job ``job_id`` (names checked, never trusted)."""
        if not is_safe_name(job_id) or not is_safe_name(name):
            raise ValueError(f"not a plain file name: {job_id!r}/{name!r}")
        return f"{self.root}/{job_id}/{name}"

    def url_for(self, job_id: str, name: str) -> str:
        """The store URL of a job's file (``s3://bucket/prefix/<job id>/<name>``, ``file://...``)."""
        path = self.path(job_id, name)
        # A local path is already stripped of its protocol: fsspec would only add "file://".
        return f"file://{path}" if self._local else str(self.fs.unstrip_protocol(path))

    def exists(self, job_id: str, name: str) -> bool:
        """True when the job already has a file called ``name``."""
        path = self.path(job_id, name)
        return os.path.exists(path) if self._local else bool(self.fs.exists(path))

    def save(self, job_id: str, name: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Write ``chunks`` as the job's file ``name``; return what the job's result lists
        about it: ``name``, ``url`` (store URL), ``size`` and, on a local store, ``path``."""
        path = self.path(job_id, name)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        size = 0
        # Locally a plain file (what fsspec's local open amounts to, less its path handling).
        with open(path, "wb") if self._local else self.fs.open(path, "wb", **self._block()) as fh:
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
        found = self.info(job_id, name)
        return None if found is None else found[0]

    def info(self, job_id: str, name: str) -> tuple[int, float | None, str] | None:
        """``(size, modified time or None, validator)`` of a stored regular file, or None.

        The validator is the store's ETag when it has one (S3), else size and mtime: it changes
        whenever the file does, so a cached copy or a resumed download can be checked.
        """
        try:
            info = self.fs.info(self.path(job_id, name))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        size = int(info.get("size") or 0)
        modified = _timestamp(info.get("LastModified") or info.get("mtime") or info.get("created"))
        tag = str(info.get("ETag") or "").strip('"') or f"{size:x}-{int((modified or 0) * 1e6):x}"
        return size, modified, tag

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

    def stream(self, job_id: str, name: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The file's bytes from ``start`` (``length`` of them, default: to the end), chunk by
        chunk; a remote store reads only that range."""
        left = length
        with self.fs.open(self.path(job_id, name), "rb", **self._block()) as fh:
            if start:
                fh.seek(start)
            while left is None or left > 0:
                chunk = fh.read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def signed_url(self, job_id: str, name: str, seconds: float) -> str | None:
        """A presigned HTTP(S) URL valid ``seconds``, or None when the store cannot sign."""
        try:
            url = self.fs.sign(self.path(job_id, name), expiration=int(seconds))
        except NotImplementedError:
            return None
        return str(url) if str(url).startswith(("http://", "https://")) else None


def _timestamp(value: Any) -> float | None:
    """A file system's modified time (a datetime or epoch seconds) as epoch seconds."""
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def save_output(settings: Settings, job_id: str, name: str, chunks: Iterable[bytes],
                *, alternative: str = "", store: OutputStore | None = None) -> dict[str, Any]:
    """Store one output file of a job; every connector writes its outputs through here.

    ``name`` is reduced to its base name; when the job already has a file of that name, it is
    stored as ``<alternative>_<name>`` (e.g. the node id) instead. Returns the result entry
    (see :meth:`OutputStore.save`). ``store``: the store of ``settings`` when the caller keeps
    one (opening it resolves the URL each time).
    """
    store = store or OutputStore.from_settings(settings)
    base = os.path.basename(name.replace("\\", "/")).replace("..", "_").lstrip(".") or "output"
    if alternative and store.exists(job_id, base):
        base = f"{alternative}_{base}"
    return store.save(job_id, base, chunks)
