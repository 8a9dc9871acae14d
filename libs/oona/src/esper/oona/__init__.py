"""Oona: the Esper bus on Redis Streams, and an in-process bus with the same semantics.

Publish Leyline envelopes, consume them through consumer groups with
at-least-once delivery, retries, reclaiming of abandoned messages and a
dead-letter stream. See ``libs/oona/README.md``.
"""

from esper.oona.bus import Bus, BusUnavailable, ConsumerOptions, Delivery, Handler, Subscription
from esper.oona.consumer import Consumer
from esper.oona.idempotency import IdempotencyStore, MemoryIdempotencyStore, RedisIdempotencyStore, idempotent
from esper.oona.memory_bus import InMemoryBus
from esper.oona.metrics import BusMetrics, default_metrics
from esper.oona.redis_bus import RedisBus, connect

__all__ = [
    "Bus",
    "BusMetrics",
    "BusUnavailable",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "Handler",
    "IdempotencyStore",
    "InMemoryBus",
    "MemoryIdempotencyStore",
    "RedisBus",
    "RedisIdempotencyStore",
    "Subscription",
    "connect",
    "default_metrics",
    "idempotent",
]
