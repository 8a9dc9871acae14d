"""BusReadiness: ready only while consuming and while Redis answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from esper.service import BusReadiness


async def _wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def test_ready_while_consuming_against_a_live_redis(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        readiness = BusReadiness(client.ping, interval_s=0.05)
        assert readiness.not_ready() == "consumers not started"
        async with readiness.consuming():
            await _wait_until(lambda: readiness.not_ready() is None)
        assert readiness.not_ready() == "consumers not started"
        await client.aclose()

    asyncio.run(scenario())


def test_not_ready_when_redis_stops_answering() -> None:
    answering = [True]

    async def ping() -> bool:
        if not answering[0]:
            raise ConnectionError("redis went away")
        return True

    async def scenario() -> None:
        readiness = BusReadiness(ping, interval_s=0.02, stale_s=0.1)
        async with readiness.consuming():
            await _wait_until(lambda: readiness.not_ready() is None)
            answering[0] = False
            await _wait_until(lambda: (readiness.not_ready() or "").startswith("redis has not answered for"))

    asyncio.run(scenario())
