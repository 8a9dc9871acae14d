"""Shared fixtures: a real Redis for the whole test session.

* ``redis_url`` (session): ``ESPER_TEST_REDIS_URL`` if set (it must answer), else
  a private ``redis-server`` on a free port. With neither, tests that need Redis
  are skipped on a developer machine and FAIL when ``CI`` is set.
* ``clean_redis_url`` (function): the same URL after FLUSHDB, so tests do not see
  each other's keys. Point ESPER_TEST_REDIS_URL at a scratch database: it is flushed.
* ``redis_server_factory`` (function): start extra private servers a test may
  stop and start again (``RedisServer``, see ``tests/redis_server.py``); they are
  stopped after the test.

Runs train on the CPU unless a test names a device (``ESPER_DEVICE=cpu`` for the
session and the processes it starts, unless already set): many tests compare a
run digit for digit with one made another way, and on a machine with a GPU the
default ``auto`` would train one side there. ``tests/tolaria/test_device.py``
names CUDA where the machine has it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("ESPER_DEVICE", "cpu")

from redis_server import RedisServer, redis_server_available


def _no_redis(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a Redis for the test suite: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's Redis."""
    external = os.environ.get("ESPER_TEST_REDIS_URL")
    if external:
        client = redis.Redis.from_url(external, socket_connect_timeout=2.0)
        try:
            client.ping()
        except redis.RedisError as exc:
            pytest.fail(f"ESPER_TEST_REDIS_URL={external!r} does not answer: {exc}", pytrace=False)
        finally:
            client.close()
        yield external
        return
    if not redis_server_available():
        _no_redis("no ESPER_TEST_REDIS_URL and no redis-server binary (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """The session Redis, emptied (FLUSHDB) for this test."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``make(durable=False)`` -> a started private RedisServer that the test may stop and start."""
    if not redis_server_available():
        _no_redis("this test needs its own redis-server binary (apt-get install redis-server)")
    servers: list[RedisServer] = []

    def make(*, durable: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", durable=durable)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
