"""The bus interface every Esper component talks through.

Two implementations share it and its semantics: :class:`esper.oona.RedisBus`
(services, Redis Streams) and :class:`esper.oona.InMemoryBus` (one process,
training and RL, no Redis). Delivery is at-least-once:

* a handler that returns normally has its message acknowledged;
* a handler that raises leaves it unacknowledged, so it is delivered again
  (after ``retry_delay_ms`` to the same consumer, or to another consumer once
  it has been idle ``claim_idle_ms``);
* after ``max_deliveries`` deliveries a failing message goes to the dead-letter
  stream (``esper.dlq``) with the error, its original bytes and where it came
  from, and is acknowledged; bytes that do not decode go there at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from esper.leyline import Envelope, Message
from esper.leyline import streams as ls


class Delivery(NamedTuple):
    """Where a message came from and how often it has been delivered (1 on first delivery)."""

    stream: str
    entry_id: str
    group: str
    consumer: str
    deliveries: int


#: ``async handler(envelope, delivery)``: return to acknowledge, raise to have it delivered again.
Handler = Callable[[Envelope[Message], Delivery], Awaitable[Any]]


class BusUnavailable(ConnectionError):
    """The bus could not take a message within the publish timeout; nothing was silently dropped."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How a consumer reads, retries and gives up. Defaults come from Leyline.

    ``batch_size`` bounds the work in flight: a consumer reads at most this many
    entries, handles them (``concurrency`` at a time, in order when 1), acks
    them, and only then reads again, so a slow handler slows reading instead of
    piling up messages in memory.
    """

    batch_size: int = ls.READ_COUNT
    concurrency: int = 1
    block_ms: int = ls.READ_BLOCK_MS
    max_deliveries: int = ls.MAX_DELIVERIES
    claim_idle_ms: int = ls.CLAIM_IDLE_MS
    claim_interval_ms: int | None = None
    retry_delay_ms: int = 200
    stats_interval_ms: int = 5_000
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "concurrency", "block_ms", "max_deliveries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ConsumerOptions.{name} must be an integer >= 1, got {value!r}")
        for name in ("claim_idle_ms", "retry_delay_ms", "stats_interval_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ConsumerOptions.{name} must be an integer >= 0, got {value!r}")
        if self.claim_interval_ms is not None and self.claim_interval_ms < 1:
            raise ValueError(f"ConsumerOptions.claim_interval_ms must be >= 1, got {self.claim_interval_ms!r}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError(
                f"ConsumerOptions.reconnect_min_s/max_s must satisfy 0 < min <= max, "
                f"got {self.reconnect_min_s!r}/{self.reconnect_max_s!r}"
            )

    @property
    def claim_every_s(self) -> float:
        """How often to look for entries abandoned by dead consumers (default: every claim_idle_ms / 2)."""
        interval = self.claim_interval_ms if self.claim_interval_ms is not None else max(self.claim_idle_ms // 2, 1)
        return interval / 1000.0


class Subscription(Protocol):
    """A running (or runnable) consumer. ``run()`` returns after ``stop()``."""

    async def run(self) -> None:
        """Create the groups if needed, drain this consumer's own pending entries, then read new ones."""

    async def stop(self) -> None:
        """Stop reading, finish and ack the messages in flight, and return when ``run()`` has exited."""


class Bus(Protocol):
    """Publish Leyline envelopes to streams and consume them through consumer groups."""

    async def publish(self, stream: str, envelope: Envelope[Any]) -> str:
        """Append one envelope to ``stream``; return its entry id once the bus has stored it."""

    async def publish_many(self, stream: str, envelopes: Sequence[Envelope[Any]]) -> list[str]:
        """Append envelopes in order in one round trip; return their entry ids."""

    async def publish_raw(self, stream: str, data: bytes) -> str:
        """Append already-encoded envelope bytes (bridges and tests); consumers validate them."""

    def subscribe(
        self,
        streams: str | Sequence[str],
        group: str,
        consumer: str,
        handler: Handler,
        options: ConsumerOptions | None = None,
    ) -> Subscription:
        """A consumer named ``consumer`` in ``group`` that calls ``handler`` for each message.

        Nothing is read until ``run()`` is awaited (usually as a task).
        """

    async def ping(self) -> None:
        """Return once the bus answers; raise (a ``ConnectionError``) when it does not."""

    async def pending(self, stream: str, group: str, consumer: str, count: int = 100) -> list[Envelope[Message]]:
        """Envelopes ``consumer`` of ``group`` holds unacknowledged on ``stream``, oldest first.

        A restarted service asks this to learn what it was doing when it died.
        No group yet means nothing pending; entries that no longer decode are
        left out (the consumer dead-letters them when it reads them again).
        """

    async def aclose(self) -> None:
        """Release connections; consumers should be stopped first."""
