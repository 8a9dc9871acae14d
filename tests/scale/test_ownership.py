"""The ownership mechanism both services use (``esper.oona.ownership``), on a real Redis, in one process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from esper.leyline import AdaptationCommand, CommandAction, Envelope, Message, decode
from esper.leyline import streams as ls
from esper.oona import ConsumerOptions, Delivery, RedisBus
from esper.oona.leases import Leases, rendezvous
from esper.oona.ownership import Lane, OwnedRuns, RunRouter

GROUP = "svc"
SOURCE = ls.CONTROL_COMMANDS


def command(i: int) -> AdaptationCommand:
    return AdaptationCommand(command_id=f"c{i}", action=CommandAction.PAUSE)


async def until(check: Callable[[], Awaitable[Any] | Any], timeout_s: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def test_a_lease_has_one_holder_until_it_expires_or_is_released(clean_redis_url: str) -> None:
    async def go() -> None:
        bus = RedisBus.from_url(clean_redis_url)
        a, b = Leases.on(bus, GROUP, "a", ttl_ms=300), Leases.on(bus, GROUP, "b", ttl_ms=300)
        assert await a.acquire("r1") and await a.acquire("r1")  # re-entrant for its holder
        assert not await b.acquire("r1")
        assert await a.renew(["r1"]) == set() and await b.renew(["r1"]) == {"r1"}
        await b.release("r1")  # not b's to release
        assert await a.owner("r1") == "a"
        await asyncio.sleep(0.45)  # expired: a stopped renewing
        assert await a.owner("r1") is None and await b.acquire("r1")
        assert await a.renew(["r1"]) == {"r1"}
        await b.release("r1")
        assert await a.owner("r1") is None
        await bus.aclose()

    asyncio.run(go())


def test_rendezvous_moves_only_the_runs_of_a_replica_that_left() -> None:
    runs = [f"run-{i}" for i in range(200)]
    three = {r: rendezvous(r, ["x", "y", "z"]) for r in runs}
    two = {r: rendezvous(r, ["x", "y"]) for r in runs}
    assert all(two[r] == three[r] for r in runs if three[r] != "z")
    assert set(three.values()) == {"x", "y", "z"} and rendezvous("r", []) is None


def test_the_router_copies_in_order_onto_each_runs_stream_and_refuses_ended_runs(clean_redis_url: str) -> None:
    refused: list[tuple[str, str]] = []

    async def on_refused(lane: str, envelope: Envelope[Message], reason: str) -> None:
        refused.append((envelope.run_id, reason))

    async def go() -> dict[str, list[str]]:
        bus = RedisBus.from_url(clean_redis_url)
        leases = Leases.on(bus, GROUP, "router-1", ttl_ms=600)
        lane = Lane("cmd", (SOURCE,), handler=_never)
        router = RunRouter(bus, leases, [lane], on_refused=on_refused, unless_ended=True, index=True)
        await leases.mark_ended("gone")
        task = asyncio.create_task(router.run())
        for i in range(20):
            await bus.publish(SOURCE, Envelope(payload=command(i), run_id=f"r{i % 2}"))
        await bus.publish(SOURCE, Envelope(payload=command(99), run_id="gone"))
        await until(lambda: refused)
        got = {}
        for run_id in ("r0", "r1"):
            entries = await bus.client.xrange(ls.routed_stream(GROUP, "cmd", run_id))
            got[run_id] = [decode(fields[b"m"]).payload.command_id for _, fields in entries]  # type: ignore[attr-defined]
        assert sorted(await leases.indexed_runs(now=time.time())) == ["r0", "r1"]
        await router.stop()
        await task
        await bus.aclose()
        return got

    got = asyncio.run(go())
    assert got == {"r0": [f"c{i}" for i in range(0, 20, 2)], "r1": [f"c{i}" for i in range(1, 20, 2)]}
    assert refused == [("gone", "ended")]


async def _never(envelope: Envelope[Message], delivery: Delivery) -> None:
    raise AssertionError("the router only copies")


def test_an_adopter_takes_over_what_a_dead_owner_held_unacked_and_handles_it_once(clean_redis_url: str) -> None:
    async def go() -> list[str]:
        bus = RedisBus.from_url(clean_redis_url)
        stream = ls.routed_stream(GROUP, "cmd", "r1")
        # The dead owner read two commands and never acked them; a third was never read.
        dead = Leases.on(bus, GROUP, "dead", ttl_ms=300)
        assert await dead.acquire("r1")
        await dead.ensure_group(stream, GROUP)
        for i in range(3):
            await bus.publish(stream, Envelope(payload=command(i), run_id="r1"))
        await bus.client.xreadgroup(GROUP, "dead", {stream: ">"}, count=2)
        handled: list[str] = []

        async def handle(envelope: Envelope[Message], delivery: Delivery) -> None:
            handled.append(envelope.payload.command_id)  # type: ignore[attr-defined]

        live = Leases.on(bus, GROUP, "live", ttl_ms=300)
        owned = OwnedRuns(bus, live, [Lane("cmd", (SOURCE,), handle, ConsumerOptions(claim_idle_ms=3_600_000))])
        assert not await owned.adopt("r1")  # the dead owner's lease has not expired yet
        await asyncio.sleep(0.4)
        assert await owned.adopt("r1")
        await until(lambda: len(handled) == 3)
        await asyncio.sleep(0.3)
        pending = await bus.client.xpending(stream, GROUP)
        await owned.close()
        await bus.aclose()
        assert pending["pending"] == 0
        return handled

    assert asyncio.run(go()) == ["c0", "c1", "c2"]


def test_a_scan_adopts_unowned_runs_that_hash_to_this_replica(clean_redis_url: str) -> None:
    async def go() -> tuple[list[str], list[str]]:
        bus = RedisBus.from_url(clean_redis_url)
        lane = Lane("cmd", (SOURCE,), _never)
        a = OwnedRuns(bus, Leases.on(bus, GROUP, "a", ttl_ms=1000), [lane], clock=lambda: 1000.0)
        b = OwnedRuns(bus, Leases.on(bus, GROUP, "b", ttl_ms=1000), [lane], clock=lambda: 1000.0)
        await a.leases.heartbeat()
        await b.leases.heartbeat()
        runs = [f"run-{i}" for i in range(8)]
        await bus.client.zadd(a.leases.index_key, dict.fromkeys(runs, 1000.0))
        got_a, got_b = await a.scan_once(), await b.scan_once()
        await a.close()
        await b.close()
        await bus.aclose()
        return got_a, got_b

    got_a, got_b = asyncio.run(go())
    runs = [f"run-{i}" for i in range(8)]
    assert sorted(got_a + got_b) == runs
    assert got_a == [r for r in runs if rendezvous(r, ["a", "b"]) == "a"]
