"""Urza and Tezzeret as real processes on a real Redis: a request compiled end to end, health and metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from urza_server import TOKEN, free_port

from esper.leyline import Envelope
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest, CompileResult, CompileStatus
from esper.oona import RedisBus

from .test_worker import results

pytestmark = pytest.mark.slow


def start(module: str, port: int, tmp_path: Path, redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ESPER_API_TOKEN": TOKEN, "ESPER_REDIS_URL": redis_url, "ESPER_RUNS_DIR": str(tmp_path)}
    log = open(tmp_path / f"{module}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port), *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url} exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s}s")


@pytest.fixture
def stack(clean_redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    urza_port, tezzeret_port = free_port(), free_port()
    urza_url = f"http://127.0.0.1:{urza_port}"
    urza = start("esper.urza.service", urza_port, tmp_path, clean_redis_url)
    tezzeret = start(
        "esper.tezzeret.service", tezzeret_port, tmp_path, clean_redis_url, "--urza-url", urza_url, "--repeats", "3"
    )
    try:
        wait_ready(urza_url, urza)
        wait_ready(f"http://127.0.0.1:{tezzeret_port}", tezzeret)
        yield urza_url, f"http://127.0.0.1:{tezzeret_port}"
    finally:
        for process in (tezzeret, urza):
            process.send_signal(signal.SIGTERM)
        for process in (tezzeret, urza):
            assert process.wait(timeout=30) == 0, (tmp_path / "esper.tezzeret.service.log").read_text()[-2000:]


def test_a_compile_request_goes_through_both_services(stack, clean_redis_url, tmp_path):
    urza_url, tezzeret_url = stack

    async def publish() -> None:
        bus = RedisBus.from_url(clean_redis_url)
        request = CompileRequest(request_id="e2e", blueprint_id="depthwise", input_shape=[8, 19], layout="conv1d")
        await bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=request, run_id="run-e2e"))
        await bus.aclose()

    asyncio.run(publish())
    deadline = time.monotonic() + 60
    answered: list[CompileResult] = []
    while not answered and time.monotonic() < deadline:
        answered = results(clean_redis_url)
        time.sleep(0.2)
    [result] = answered
    assert result.status is CompileStatus.OK, result.error
    assert result.kernel is not None
    kernel = httpx.get(f"{urza_url}/kernels/{result.kernel.kernel_id}").json()
    assert kernel["status"] == "validated" and kernel["sha256"] == result.kernel.sha256
    assert (tmp_path / "urza" / "urza.db").exists()  # the embedded default database under the runs dir
    metrics = httpx.get(f"{tezzeret_url}/metrics").text
    assert 'esper_tezzeret_compile_results_total{status="ok"} 1.0' in metrics
    assert httpx.get(f"{urza_url}/healthz").json() == {"status": "ok"}


def test_sigterm_while_a_kernel_is_timed_exits_promptly_and_leaves_the_kernel_validated(clean_redis_url, tmp_path):
    import redis

    urza_port, tezzeret_port = free_port(), free_port()
    urza_url = f"http://127.0.0.1:{urza_port}"
    urza = start("esper.urza.service", urza_port, tmp_path, clean_redis_url)
    # A million timing repeats: the kernel is validated and answered, and still being timed when the signal comes.
    tezzeret = start(
        "esper.tezzeret.service",
        tezzeret_port,
        tmp_path,
        clean_redis_url,
        "--urza-url",
        urza_url,
        "--repeats",
        "1000000",
    )
    try:
        wait_ready(urza_url, urza)
        wait_ready(f"http://127.0.0.1:{tezzeret_port}", tezzeret)

        async def publish() -> None:
            bus = RedisBus.from_url(clean_redis_url)
            request = CompileRequest(request_id="slow", blueprint_id="mlp", input_shape=[16])
            await bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=request, run_id="run-slow"))
            await bus.aclose()

        asyncio.run(publish())
        deadline = time.monotonic() + 60
        while httpx.get(f"{urza_url}/kernels", params={"status": "validated"}).json()["total"] == 0:
            assert time.monotonic() < deadline, "the kernel was never validated"
            time.sleep(0.2)
        time.sleep(1.0)
        t0 = time.monotonic()
        tezzeret.send_signal(signal.SIGTERM)
        assert tezzeret.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 15
        client = redis.Redis.from_url(clean_redis_url)
        assert client.xpending(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET)["pending"] == 0  # answered before timing
        client.close()
        [result] = results(clean_redis_url)
        assert result.status.value == "ok"
        [kernel] = httpx.get(f"{urza_url}/kernels", params={"status": "validated"}).json()["items"]
        assert kernel["latency_us"] is None  # its timing was cut short: the kernel goes without
    finally:
        for process in (tezzeret, urza):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
