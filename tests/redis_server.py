"""A private ``redis-server`` for tests: start, stop and start again on the same port and data dir.

Import it in tests with ``from redis_server import RedisServer`` (``tests/conftest.py``
puts this folder on ``sys.path``) or use the fixtures there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import redis

#: Where tests look for the server binary; override with ESPER_REDIS_SERVER.
REDIS_SERVER_BINARY = os.environ.get("ESPER_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(names: Iterable[str]) -> dict[str, int]:
    """A distinct free port per name: every socket stays bound until all are chosen, so no two names share a
    port (separate ``free_port()`` calls may hand the same port out twice, and two services then race for it)."""
    with contextlib.ExitStack() as stack:
        socks = {name: stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for name in names}
        for sock in socks.values():
            sock.bind(("127.0.0.1", 0))
        return {name: int(sock.getsockname()[1]) for name, sock in socks.items()}


def redis_server_available() -> bool:
    return os.access(REDIS_SERVER_BINARY, os.X_OK)


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 that a test owns.

    ``durable=True`` turns on the append-only file with ``appendfsync always``,
    so every write Redis acknowledged survives :meth:`stop` + :meth:`start`.
    Without it nothing is persisted (fast, for ordinary tests).
    """

    def __init__(self, directory: Path, *, port: int | None = None, durable: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and return once it answers PING (and has loaded its data)."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [
            REDIS_SERVER_BINARY,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--logfile",
            str(self.directory / "redis.log"),
            "--appendonly",
            "yes" if self.durable else "no",
        ]
        if self.durable:
            args += ["--appendfsync", "always"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    log = (self.directory / "redis.log").read_text() if (self.directory / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server on port {self.port} exited at start: {err}{log[-2000:]}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout_s}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes the append-only file and exits)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close()

    def _close(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
