"""``esper up`` as a user runs it: a real process, real Redis, real services, stopped by a signal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from esper.cli.processes import pid_exists
from esper.cli.redis_local import free_port

pytestmark = pytest.mark.slow


class EsperUp:
    """``esper up`` in a subprocess, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "esper.cli.main", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.process.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output}")

    def finish(self, timeout_s: float = 60.0) -> int:
        code = self.process.wait(timeout_s)
        self._reader.join(5)
        return code

    def pids(self) -> dict[str, int]:
        """Service -> pid, as printed when started; 'redis' for a private Redis."""
        found = {name: int(pid) for name, pid in re.findall(r"([\w-]+) \(pid (\d+)\)", self.output)}
        if "redis-server" in found:
            found["redis"] = found.pop("redis-server")
        return found


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator:
    started: list[EsperUp] = []

    def start(*args: str, redis_url: str, extra_env: dict[str, str] | None = None) -> EsperUp:
        env = {**os.environ, "ESPER_REDIS_URL": redis_url, **(extra_env or {})}
        env.pop("ESPER_API_TOKEN", None)
        up = EsperUp(["--runs-dir", str(tmp_path / "runs"), *args], env, tmp_path)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait()


def gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(pid_exists(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_stops_every_service_and_leaves_no_process(run_up, clean_redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    up = run_up("--only", "nissa", "--nissa-port", str(port), redis_url=clean_redis_url)
    up.wait_for(r"stack ready")
    assert f"http://127.0.0.1:{port}/metrics" in up.output
    assert "API token" in up.output  # none was set, so one was generated and shown
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    pids = list(up.pids().values())
    assert pids and all(pid_exists(p) for p in pids)
    up.process.send_signal(signal.SIGTERM)
    assert up.finish() == 0, up.output
    assert gone(pids), f"left behind: {[p for p in pids if pid_exists(p)]}"
    assert "esper up: stopped" in up.output
    assert (tmp_path / "runs" / "logs" / "nissa.log").read_text()


def test_without_a_reachable_redis_it_runs_a_private_one_and_stops_it(run_up) -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    up = run_up("--only", "nissa", "--nissa-port", str(free_port()), redis_url=dead_url)
    up.wait_for(r"stack ready")
    assert "private redis-server" in up.output
    pids = up.pids()
    assert "redis" in pids and "nissa" in pids
    up.process.send_signal(signal.SIGINT)
    assert up.finish() == 0, up.output
    assert gone(list(pids.values()))


def test_no_redis_and_no_binary_is_a_clear_error(run_up) -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    up = run_up("--only", "nissa", redis_url=dead_url, extra_env={"ESPER_REDIS_SERVER": "/nonexistent/redis-server"})
    assert up.finish() == 2
    assert "apt-get install redis-server" in up.output and "ESPER_REDIS_URL" in up.output


def test_a_service_that_keeps_dying_is_given_up_on_with_its_log(run_up, clean_redis_url: str) -> None:
    args = ("--only", "nissa", "--nissa-port", str(free_port()), "--profile", "bogus", "--max-restarts", "1")
    up = run_up(*args, redis_url=clean_redis_url)
    assert up.finish() == 1
    assert "nissa kept dying (1 restarts)" in up.output
    assert "unknown diagnostic profile (value 'bogus')" in up.output  # the tail of nissa.log


def test_a_port_in_use_is_refused_before_starting_anything(run_up, clean_redis_url: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = run_up("--only", "nissa", "--nissa-port", str(port), redis_url=clean_redis_url)
        assert up.finish() == 2
    assert f"port {port} is in use" in up.output


def test_a_killed_service_is_restarted_by_the_supervisor(run_up, clean_redis_url: str) -> None:
    port = free_port()
    up = run_up("--only", "nissa", "--nissa-port", str(port), redis_url=clean_redis_url)
    up.wait_for(r"stack ready")
    first = up.pids()["nissa"]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200 and not pid_exists(first):
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, up.output
        time.sleep(0.1)
    up.process.send_signal(signal.SIGTERM)
    assert up.finish() == 0


def test_demo_runs_one_job_writes_the_report_and_stops_everything(run_up, clean_redis_url: str, tmp_path: Path) -> None:
    ports = [
        arg
        for name in ("tamiyo", "tolaria", "nissa", "urza", "tezzeret")
        for arg in (f"--{name}-port", str(free_port()))
    ]
    up = run_up("--demo", "--epochs", "3", "--max-train-samples", "600", *ports, redis_url=clean_redis_url)
    assert up.finish(timeout_s=240) == 0, up.output
    report_line = up.wait_for(r"^report: (\S+)")
    report = json.loads(Path(report_line.group(1)).read_text())
    assert report["epochs"] == 3 and report["policy"] == "heuristic-per-slot"
    assert report["mode"] == "lockstep"
    # lockstep: every epoch is decided, once: each boundary whole (the default heuristic decides once per slot)
    by_epoch: dict[int, list[tuple[int, int]]] = {}
    for d in report["decisions"]:
        by_epoch.setdefault(d["epoch"], []).append((d["index"], d["count"]))
    assert sorted(by_epoch) == [1, 2, 3]
    assert all(sorted(b) == [(i, len(b)) for i in range(len(b))] for b in by_epoch.values()), by_epoch
    assert len(report["narrative"]) >= 3 and all(isinstance(line, str) and line for line in report["narrative"])
    assert "test accuracy" in up.output  # the esper report summary
    assert gone(list(up.pids().values()))
