"""A real Urza for tests: the HTTP app on uvicorn in a background thread, SQLite and a blob directory.

``from urza_server import UrzaServer`` (``tests/conftest.py`` puts this folder
on ``sys.path``). :meth:`UrzaServer.publish_kernel` stores an artifact the way
Tezzeret does (upload, register, report validated), so Kasmina tests can load
kernels without running the compiler.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from esper.urza.app import create_app
from esper.urza.blobs import LocalBlobStore
from esper.urza.db import open_database

TOKEN = "urza-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UrzaServer:
    """Urza on ``url`` until :meth:`stop`; its files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.engine, sessions = open_database(f"sqlite:///{self.root / 'urza.db'}")
        self.blobs = LocalBlobStore(self.root / "blobs")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(sessions, self.blobs, TOKEN), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> UrzaServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("Urza did not start")
            time.sleep(0.02)
        self.http = httpx.Client(base_url=self.url, headers=AUTH, timeout=10)
        return self

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.dispose()

    def publish_kernel(
        self,
        blueprint: str,
        shape: list[int],
        artifact: bytes,
        *,
        layout: str | None = None,
        config: dict[str, Any] | None = None,
        artifact_format: str = "torch.export",
    ) -> dict[str, Any]:
        """Register the kernel, upload ``artifact`` and mark it validated; returns Urza's kernel record."""
        sha = hashlib.sha256(artifact).hexdigest()
        self.http.put(f"/blobs/{sha}", content=artifact).raise_for_status()
        body = {"blueprint_id": blueprint, "input_shape": shape, "layout": layout, "config": config or {}}
        kernel = self.http.post("/kernels", json=body)
        kernel.raise_for_status()
        kernel_id = kernel.json()["kernel_id"]
        done = self.http.patch(
            f"/kernels/{kernel_id}", json={"status": "validated", "sha256": sha, "artifact_format": artifact_format}
        )
        done.raise_for_status()
        result: dict[str, Any] = done.json()
        return result
