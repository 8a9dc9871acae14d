"""A PostgreSQL for Urza's tests: an external one, the machine's own, or a private ``postgres`` started here.

Order: ``ESPER_TEST_POSTGRES_URL`` (must answer); else 127.0.0.1:5432 database
``test`` as user ``postgres`` (trust auth) if it answers; else a private server
from Debian's package (``initdb`` + ``pg_ctl`` under ``/usr/lib/postgresql/*/bin``,
run as the ``postgres`` user when the tests run as root) on a free port.
Each test gets its own schema (dropped afterwards), so tests never see each
other's rows and need no CREATE DATABASE.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def answers(url: str) -> str | None:
    """None if ``url`` answers a query, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means "not there"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def _binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """``initdb`` into ``data_dir`` and ``pg_ctl start`` on a free port; :meth:`stop` shuts it down."""

    def __init__(self, data_dir: Path) -> None:
        bins = _binaries()
        if bins is None:
            raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")
        self.bins = bins
        self.data_dir = data_dir
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.user is not None:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # No pipes: the server pg_ctl starts would hold them open and the call would never return.
        subprocess.run(
            cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PrivatePostgres:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.data_dir, self.user)
            os.chmod(self.data_dir.parent, 0o755)
        self._run(str(self.bins / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        log = str(self.data_dir / "server.log")
        self._run(str(self.bins / "pg_ctl"), "-D", str(self.data_dir), "-o", opts, "-l", log, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while answers(self.url) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"private postgres on port {self.port} did not answer")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        self._run(str(self.bins / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
