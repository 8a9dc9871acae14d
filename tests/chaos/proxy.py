"""A TCP proxy on loopback that a test can cut: one service's connections to Redis go through it.

:meth:`CuttableProxy.cut` closes every connection it carries (both ends, as a
broken network does) and refuses new ones until :meth:`restore`. The upstream
may restart underneath it: each accepted connection dials the upstream anew,
and one that cannot be dialled is closed at once (the client sees a refused
connection, as it would without the proxy).
"""

from __future__ import annotations

import contextlib
import socket
import threading

_CHUNK = 65536


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` until cut."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut = False
        self._closed = False
        self.cuts = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> CuttableProxy:
        self._thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> int:
        """Drop every carried connection and refuse new ones; returns how many were dropped."""
        with self._lock:
            self._cut = True
            self.cuts += 1
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            _close(*pair)
        return len(pairs)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._cut:
                    _close(client, upstream)
                    continue
                pair = (client, upstream)
                self._pairs.add(pair)
                self.connections += 1
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target, pair), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        _close(*pair)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
