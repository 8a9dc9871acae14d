"""Finding a Redis for the stack: the one at ``ESPER_REDIS_URL`` if it answers, else a private ``redis-server``.

The private server listens on 127.0.0.1 on a free port, keeps its files in a
temporary folder, persists nothing, and is stopped (and its folder removed) by
:meth:`PrivateRedis.stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from esper.cli.processes import die_with_parent

#: Where the binary is looked for when not on PATH (Debian's package installs it here).
FALLBACK_BINARY = "/usr/bin/redis-server"
INSTALL_HINT = (
    "no Redis for the stack: {url} does not answer and no redis-server binary was found. "
    "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
    "or set ESPER_REDIS_URL to a Redis that is running (e.g. redis://host:6379/0)."
)


class RedisUnavailableError(RuntimeError):
    """Neither a reachable Redis nor a ``redis-server`` binary to start one."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether the Redis at ``url`` answers PING within ``timeout_s``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def redis_server_binary() -> str | None:
    """Path of ``redis-server``, or ``None``.

    ``ESPER_REDIS_SERVER`` when set (and only it: an explicit choice is not
    second-guessed), else the one on PATH, else Debian's location.
    """
    explicit = os.environ.get("ESPER_REDIS_SERVER")
    candidates = (explicit,) if explicit else (shutil.which("redis-server"), FALLBACK_BINARY)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class PrivateRedis:
    """A ``redis-server`` this process starts on a free port and stops again."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="esper-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout_s: float = 10.0) -> PrivateRedis:
        """Start the server; return once it answers PING. Raises ``RuntimeError`` with its log if it does not."""
        log_file = self.directory / "redis.log"
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log_file),
        ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url, timeout_s=0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start: {tail}")
            time.sleep(0.05)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; remove the temporary folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def resolve_redis(url: str) -> tuple[str, PrivateRedis | None]:
    """``(url, None)`` if ``url`` answers, else ``(private_url, started PrivateRedis)``.

    Raises :class:`RedisUnavailableError` (naming how to install Redis) when
    ``url`` does not answer and there is no ``redis-server`` to start.
    """
    if redis_answers(url):
        return url, None
    binary = redis_server_binary()
    if binary is None:
        raise RedisUnavailableError(INSTALL_HINT.format(url=url))
    private = PrivateRedis(binary).start()
    return private.url, private
