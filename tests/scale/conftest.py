"""Three Tolaria and two Tamiyo replicas as real processes on the session's Redis (emptied first)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from esper.cli.stack import Stack

from .replicas import Streams, replica_specs


@pytest.fixture(scope="package")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    root: Path = tmp_path_factory.mktemp("replicas")
    stack = Stack(
        replica_specs(tolarias=3, tamiyos=2, max_runs=2),
        redis_url=redis_url,
        runs_dir=root / "runs",
        logs_dir=root / "logs",
        api_token="scale-test-token",
    )
    # Not supervised: a replica a test kills stays dead, so the others must take its runs over.
    stack.start(supervise=False)
    try:
        stack.wait_ready(timeout_s=150)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def bus(replicas: Stack) -> Iterator[Streams]:
    s = Streams(replicas.redis_url)
    try:
        yield s
    finally:
        s.close()
