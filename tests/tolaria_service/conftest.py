from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Bus, InProcessTolaria


@pytest.fixture
def bus(clean_redis_url: str) -> Iterator[Bus]:
    client = Bus(clean_redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def tolaria(clean_redis_url: str, tmp_path: Path) -> Iterator[InProcessTolaria]:
    """The service on the test's Redis, writing runs under ``tmp_path / 'runs'``."""
    service = InProcessTolaria(clean_redis_url, tmp_path / "runs").start()
    try:
        yield service
    finally:
        service.stop()
