"""Processing a message at most once per consumer group, across redeliveries and crashes.

Delivery is at-least-once, so a handler may see a message again: after a
crash between its effect and the ack, or after a reclaim. :func:`idempotent`
wraps a handler so a message id its group already processed is skipped (and
thus acked). Processed ids are kept in Redis with a TTL (Leyline's
``IDEMPOTENCY_TTL_S``), keyed by group, so each group still sees every message.

The wrapper records a message after its handler returns. A crash in between
(effect done, id not yet recorded) would repeat the effect, so when the effect
itself is a Redis write, make it and the record one transaction with
:meth:`RedisIdempotencyStore.apply_once`: then every effect happens exactly
once, whatever is killed when.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from esper.leyline import Envelope, Message
from esper.leyline import streams as ls
from esper.oona.bus import Delivery, Handler

#: Prefix of the Redis keys that remember processed message ids.
DEFAULT_NAMESPACE = "esper:oona:processed"


class IdempotencyStore(Protocol):
    """Remembers which message ids a group has processed."""

    async def seen(self, group: str, message_id: str) -> bool:
        """Whether ``group`` already processed ``message_id``."""

    async def mark(self, group: str, message_id: str) -> None:
        """Record that ``group`` processed ``message_id``."""


def idempotent(handler: Handler, store: IdempotencyStore) -> Handler:
    """``handler``, skipping envelopes whose ``message_id`` the delivering group already processed."""

    async def once(envelope: Envelope[Message], delivery: Delivery) -> Any:
        if await store.seen(delivery.group, envelope.message_id):
            return None
        result = await handler(envelope, delivery)
        await store.mark(delivery.group, envelope.message_id)
        return result

    once.__name__ = f"idempotent_{getattr(handler, '__name__', 'handler')}"
    once.__doc__ = handler.__doc__
    return once


class RedisIdempotencyStore:
    """Processed ids as Redis keys ``<namespace>:<group>:<message_id>`` that expire after ``ttl_s``."""

    def __init__(
        self, client: aioredis.Redis, *, namespace: str = DEFAULT_NAMESPACE, ttl_s: int = ls.IDEMPOTENCY_TTL_S
    ) -> None:
        if not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError(f"ttl_s must be an integer >= 1 second, got {ttl_s!r}")
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s

    def key(self, group: str, message_id: str) -> str:
        return f"{self.namespace}:{group}:{message_id}"

    async def seen(self, group: str, message_id: str) -> bool:
        return bool(await self.client.exists(self.key(group, message_id)))

    async def mark(self, group: str, message_id: str) -> None:
        await self.client.set(self.key(group, message_id), 1, ex=self.ttl_s)

    async def apply_once(self, group: str, message_id: str, effect: Callable[[Pipeline], Any]) -> bool:
        """Queue ``effect``'s Redis commands and the processed mark in one MULTI/EXEC, unless already processed.

        ``effect`` receives the transaction pipeline and queues commands on it
        (``lambda tx: tx.hincrby("counts", "x", 1)``). Returns True when the
        effect was applied now, False when the message was processed before
        (or by a concurrent consumer that won the race, detected by WATCH).
        """
        key = self.key(group, message_id)
        async with self.client.pipeline(transaction=True) as tx:
            try:
                await tx.watch(key)
                if await tx.exists(key):
                    return False
                tx.multi()  # type: ignore[no-untyped-call]
                effect(tx)
                tx.set(key, 1, ex=self.ttl_s)
                await tx.execute()
            except WatchError:
                return False
        return True


class MemoryIdempotencyStore:
    """Processed ids in a dict, for :class:`esper.oona.InMemoryBus`; entries expire after ``ttl_s``."""

    def __init__(self, *, ttl_s: float = ls.IDEMPOTENCY_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self._clock = clock
        self._expires: dict[tuple[str, str], float] = {}
        self._next_sweep = 0.0

    async def seen(self, group: str, message_id: str) -> bool:
        expires = self._expires.get((group, message_id))
        return expires is not None and expires > self._clock()

    async def mark(self, group: str, message_id: str) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            # Drop expired ids now and then, so memory follows the TTL rather than the run length.
            self._expires = {k: t for k, t in self._expires.items() if t > now}
            self._next_sweep = now + min(self.ttl_s, 60.0)
        self._expires[(group, message_id)] = now + self.ttl_s
