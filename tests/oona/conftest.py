"""Fixtures for the bus tests: the same behavioural suite runs on Redis and in process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from esper.oona import BusMetrics, InMemoryBus, RedisBus

sys.path.insert(0, str(Path(__file__).parent))

from oona_helpers import BusFactory


@pytest.fixture
def metrics() -> BusMetrics:
    return BusMetrics(CollectorRegistry())


@pytest.fixture(params=["memory", "redis"])
def make_bus(request: pytest.FixtureRequest, metrics: BusMetrics) -> BusFactory:
    """``make_bus(**options)`` -> a fresh bus; call it inside the test's event loop."""
    if request.param == "memory":
        return lambda **kw: InMemoryBus(metrics=metrics, **kw)
    url = request.getfixturevalue("clean_redis_url")
    return lambda **kw: RedisBus.from_url(url, metrics=metrics, **kw)
