"""The service runtime: health routes, graceful SIGTERM, and no half-alive services."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port, marker = free_port(), tmp_path / "shutdown"
    proc = subprocess.Popen([sys.executable, str(HERE / "demo_service.py"), str(port), str(marker), mode])
    return proc, port, marker


def wait_ready(port: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"service on port {port} never became ready")
        time.sleep(0.1)


def test_sigterm_runs_the_shutdown_hook_and_exits_zero(tmp_path: Path) -> None:
    proc, port, marker = start(tmp_path, "ok")
    try:
        wait_ready(port)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200 and "python_info" in metrics.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert marker.read_text() == "clean"
    finally:
        proc.kill()


def test_a_dead_background_loop_stops_the_service_with_an_error(tmp_path: Path) -> None:
    proc, _, marker = start(tmp_path, "fail")
    try:
        assert proc.wait(timeout=20) == 1
        assert marker.read_text() == "clean"
    finally:
        proc.kill()
