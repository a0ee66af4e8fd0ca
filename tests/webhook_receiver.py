"""A real HTTP webhook receiver for tests: it records every request and answers as told."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request the receiver saw, and what it answered."""

    headers: dict[str, str]
    body: str
    at: float
    answered: int | None = None


@dataclass
class Receiver:
    """A webhook receiver whose answer to the n-th request (0-based) is ``answer(n)``: an HTTP
    status, or a ``threading.Event`` to wait for before answering 503."""

    answer: Callable[[int], Any]
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/jobqueue"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                entry = Received(dict(self.headers.items()), body, time.time())
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(entry)
                answer = receiver.answer(n)
                if isinstance(answer, threading.Event):
                    answer.wait(60)
                    answer = 503
                try:
                    self.send_response(answer)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    entry.answered = answer
                except OSError:
                    pass  # the sender is gone (killed): nothing was answered

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
