"""Getting a run's messages from the training thread onto the bus.

The trainer publishes through sinks, synchronously, in the training thread.
:class:`Outbox` is such a sink: it only buffers. :meth:`Outbox.flush` hands the
buffer to the event loop (``asyncio.run_coroutine_threadsafe``), which
publishes it with one ``publish_many`` per stream, and blocks the training
thread until Redis has stored every message, so torch never runs on the event
loop and nothing is acknowledged before what it caused is on the bus.
"""

from __future__ import annotations

import asyncio

from esper.leyline import (
    AdaptationDecision,
    CommandResult,
    Envelope,
    LayerHealth,
    Message,
    ModelGraph,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.leyline import streams as ls
from esper.oona import Bus

#: Where each message the trainer produces goes.
STREAM_FOR: dict[type[Message], str] = {
    ModelGraph: ls.TELEMETRY_TRAINING,
    TrainingSignals: ls.TELEMETRY_TRAINING,
    LayerHealth: ls.TELEMETRY_HEALTH,
    SeedTransition: ls.TELEMETRY_EVENTS,
    TelemetryEvent: ls.TELEMETRY_EVENTS,
    CommandResult: ls.CONTROL_RESULTS,
    AdaptationDecision: ls.CONTROL_DECISIONS,
}


def stream_for(message: Message) -> str:
    """The stream ``message`` is published on; ValueError naming the type when it has none."""
    try:
        return STREAM_FOR[type(message)]
    except KeyError:
        raise ValueError(f"field 'message_type': Tolaria does not publish {message.message_type!r}") from None


async def publish_grouped(bus: Bus, run_id: str, messages: list[Message]) -> None:
    """Publish ``messages`` as ``run_id``'s envelopes, one pipelined batch per stream.

    Streams are written in the order they first appear, and each stream keeps the
    messages' order, which is all a consumer can rely on across streams anyway.
    """
    by_stream: dict[str, list[Envelope[Message]]] = {}
    for message in messages:
        by_stream.setdefault(stream_for(message), []).append(Envelope(payload=message, run_id=run_id))
    for stream, envelopes in by_stream.items():
        await bus.publish_many(stream, envelopes)


class Outbox:
    """A trainer sink (training thread) whose :meth:`flush` publishes on ``loop`` and waits for Redis."""

    def __init__(self, bus: Bus, run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.bus, self.run_id, self.loop = bus, run_id, loop
        self._buffer: list[Message] = []

    def __call__(self, message: Message) -> None:
        stream_for(message)  # fail in the trainer's call, not later on the loop
        self._buffer.append(message)

    def flush(self) -> int:
        """Publish everything buffered; returns how many messages. Raises what publishing raised
        (``BusUnavailable`` after the bus's publish timeout)."""
        batch, self._buffer = self._buffer, []
        if batch:
            asyncio.run_coroutine_threadsafe(publish_grouped(self.bus, self.run_id, batch), self.loop).result()
        return len(batch)
