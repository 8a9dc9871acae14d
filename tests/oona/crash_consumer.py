"""A consumer process for the crash test, which SIGKILLs it mid-batch.

usage: python crash_consumer.py REDIS_URL CONSUMER_NAME EFFECTS_KEY

Each command's effect is one HINCRBY of EFFECTS_KEY[message_id], applied in
the same transaction as the processed-id mark, so counting the hash shows
whether any effect happened twice.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from esper.leyline import Envelope
from esper.leyline import streams as ls
from esper.oona import BusMetrics, ConsumerOptions, Delivery, RedisBus, RedisIdempotencyStore, idempotent

#: Slow enough that a batch takes a while, so a kill lands between effects and the batch's ack.
EFFECT_SECONDS = 0.004
OPTIONS = ConsumerOptions(batch_size=50, block_ms=100, claim_idle_ms=60_000)


def command_effect(store: RedisIdempotencyStore, effects_key: str, calls: list[str] | None = None) -> Any:
    """The handler both the doomed and the surviving consumer run (before the idempotent wrapper)."""

    async def apply(envelope: Envelope[Any], delivery: Delivery) -> None:
        if calls is not None:
            calls.append(envelope.message_id)
        await store.apply_once(
            delivery.group, envelope.message_id, lambda tx: tx.hincrby(effects_key, envelope.message_id, 1)
        )
        await asyncio.sleep(EFFECT_SECONDS)

    return apply


async def main(url: str, name: str, effects_key: str) -> None:
    bus = RedisBus.from_url(url, metrics=BusMetrics(CollectorRegistry()))
    store = RedisIdempotencyStore(bus.client, ttl_s=600)
    handler = idempotent(command_effect(store, effects_key), store)
    await bus.subscribe(ls.CONTROL_COMMANDS, ls.GROUP_TOLARIA, name, handler, OPTIONS).run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
