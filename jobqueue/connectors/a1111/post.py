"""A blocking POST in a thread of its own that can be cut off from outside.

The WebUI's ``/sdapi/v1/txt2img`` answers only once the images are done, so the connector
sends it here and watches ``/sdapi/v1/progress`` meanwhile. When the job must stop early
(stall, timeout, cancel on a frozen server) :meth:`BlockingPost.abort` shuts the socket down,
which ends the blocked read at once: no thread is left waiting on a dead server.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit


class BlockingPost:
    """``POST url`` with a JSON body, run in a daemon thread; read the outcome when ``done``."""

    def __init__(self, url: str, body: dict[str, Any], *, timeout: float, connect_timeout: float = 3.0) -> None:
        self.url = url
        self._body = json.dumps(body).encode()
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        #: Set once the answer (or the error) is in.
        self.done = threading.Event()
        self.status: int | None = None
        self.data = b""
        self.error: BaseException | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="a1111-post", daemon=True)

    def start(self) -> BlockingPost:
        self._thread.start()
        return self

    def _run(self) -> None:
        parts = urlsplit(self.url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn = kind(parts.hostname or "127.0.0.1", parts.port, timeout=self._connect_timeout)
            with self._lock:
                if self._aborted:
                    raise ConnectionAbortedError("aborted before sending")
                self._conn = conn
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self._timeout)
            conn.request("POST", path, body=self._body,
                         headers={"Content-Type": "application/json", "Accept": "application/json"})
            response = conn.getresponse()
            self.data = response.read()
            self.status = response.status
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread as it is
            self.error = exc
        finally:
            if self._conn is not None:
                self._conn.close()
            self.done.set()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """Cut the connection: a blocked send or read ends with an error at once."""
        with self._lock:
            self._aborted = True
            conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self._thread.join(2.0)

    def json(self) -> Any:
        """The answer's body as JSON (ValueError when it is not JSON)."""
        return json.loads(self.data.decode("utf-8"))
