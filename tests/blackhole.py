"""A TCP proxy for tests that can go silent: what a dropped NAT or firewall entry looks like.

``BlackholeProxy(port).start()`` listens on a free loopback port and relays every connection
to ``127.0.0.1:<port>``. :meth:`blackhole` freezes every connection open at that moment: the
proxy stops relaying in both directions but keeps both sockets open (no FIN, no RST; the
kernel still ACKs), so neither end learns anything. Connections opened later relay normally,
as a fresh NAT entry would. One thread with a selector; :meth:`stop` closes everything.
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Any


class BlackholeProxy:
    """A loopback TCP relay whose existing connections can be silently frozen."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen: list[socket.socket] = []
        self._lock = threading.Lock()
        self._freeze = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        #: Connections accepted so far.
        self.accepted = 0

    def start(self) -> BlackholeProxy:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._thread.start()
        return self

    def blackhole(self) -> int:
        """Freeze every open connection (returns how many pairs); later ones relay."""
        self._freeze.clear()
        with self._lock:
            pairs = len(self._peers) // 2
        self._freeze.set()
        # The relay thread applies it between two selects (bounded wait).
        deadline = threading.Event()
        for _ in range(100):
            if not self._freeze.is_set():
                break
            deadline.wait(0.02)
        return pairs

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [*self._peers, *self._frozen, self._listener]:
            try:
                sock.close()
            except OSError:
                pass
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._freeze.is_set():
                with self._lock:
                    for sock in list(self._peers):
                        self._selector.unregister(sock)
                        self._frozen.append(sock)
                    self._peers.clear()
                self._freeze.clear()
            for key, _ in self._selector.select(timeout=0.05):
                if key.data == "accept":
                    self._accept()
                else:
                    self._relay(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=3)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        with self._lock:
            self._peers[client] = upstream
            self._peers[upstream] = client
        self._selector.register(client, selectors.EVENT_READ, "relay")
        self._selector.register(upstream, selectors.EVENT_READ, "relay")
        self.accepted += 1

    def _relay(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock, other)
            return
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close_pair(sock, other)

    def _close_pair(self, a: Any, b: Any) -> None:
        with self._lock:
            for sock in (a, b):
                self._peers.pop(sock, None)
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
