"""One real stack (Tamiyo, Tolaria, Nissa as subprocesses) for every test in tests/stack.

The stack runs on the session's Redis, emptied when the stack starts; each
test uses its own run ids, so tests do not see each other's runs. Fault tests
kill services; the stack's supervisor restarts them, as ``esper up`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import free_ports

from esper.cli.stack import RestartPolicy, Stack, default_specs

from .harness import TOKEN, StackClient


@pytest.fixture(scope="package")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    root: Path = tmp_path_factory.mktemp("stack")
    ports = free_ports(("tamiyo", "tolaria", "nissa"))
    running = Stack(
        default_specs(ports),
        redis_url=redis_url,
        runs_dir=root / "runs",
        logs_dir=root / "logs",
        api_token=TOKEN,
        restart=RestartPolicy(max_restarts=5, backoff_s=0.2),
    ).start()
    try:
        running.wait_ready(timeout_s=120)
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[StackClient]:
    with StackClient(stack) as c:
        yield c
