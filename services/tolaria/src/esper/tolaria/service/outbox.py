"""Getting a run's messages from the training thread onto the bus, a boundary's results exactly once.

The trainer publishes through sinks, synchronously, in the training thread.
:class:`Outbox` is such a sink: it only buffers. Publishing hands the buffer to
the event loop (``asyncio.run_coroutine_threadsafe``), which publishes it with
one ``publish_many`` per stream, and blocks the training thread until Redis has
stored every message, so torch never runs on the event loop and nothing is
acknowledged before what it caused is on the bus.

Two kinds of publishing, because a boundary is either in the checkpoint or it
never happened (a resumed run redoes the epoch from the checkpoint):

* :meth:`Outbox.flush` publishes at once: an epoch's signals and health, which
  Tamiyo must see to decide on the boundary. A redone epoch publishes its own
  again (new message ids), as every observer of a resumed run expects.
* :meth:`Outbox.seal` then :meth:`Outbox.publish_sealed` commit what the
  boundary produced (command results, seed transitions, events, the new model
  graph): sealed *before* the checkpoint into ``outbox.pending`` in the run's
  folder, published only *after* it. A crash before the checkpoint leaves a
  journal the checkpoint does not cover: :meth:`Outbox.recover` drops it, and
  nothing of the lost boundary was ever published (its commands apply once, at
  the redone boundary). A crash after the checkpoint leaves a journal it covers:
  :meth:`Outbox.recover` publishes it on resume, with the same message ids, so
  nothing acknowledged is lost and a copy already on the bus is the same
  message twice (consumers are idempotent by message id), never a second
  application.

A journal is matched to a checkpoint by ``mark``: the trainer's count of
published messages, which the checkpoint stores and which grows at every
boundary.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec

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
    decode,
    encode,
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
#: The sealed, not yet published messages of the run's last boundary (see the module docstring).
JOURNAL_NAME = "outbox.pending"


def stream_for(message: Message) -> str:
    """The stream ``message`` is published on; ValueError naming the type when it has none."""
    try:
        return STREAM_FOR[type(message)]
    except KeyError:
        raise ValueError(f"field 'message_type': Tolaria does not publish {message.message_type!r}") from None


async def publish_grouped(bus: Bus, envelopes: list[Envelope[Message]]) -> None:
    """Publish ``envelopes``, one pipelined batch per stream.

    Streams are written in the order they first appear, and each stream keeps the
    messages' order, which is all a consumer can rely on across streams anyway.
    """
    by_stream: dict[str, list[Envelope[Message]]] = {}
    for envelope in envelopes:
        by_stream.setdefault(stream_for(envelope.payload), []).append(envelope)
    for stream, batch in by_stream.items():
        await bus.publish_many(stream, batch)


class Outbox:
    """A trainer sink (training thread) that publishes on ``loop`` and waits for Redis; ``folder`` holds the
    journal of the boundary being committed."""

    def __init__(self, bus: Bus, run_id: str, loop: asyncio.AbstractEventLoop, folder: Path) -> None:
        self.bus, self.run_id, self.loop = bus, run_id, loop
        self.journal = Path(folder) / JOURNAL_NAME
        self._buffer: list[Message] = []
        self._sealed: list[Envelope[Message]] = []

    def __call__(self, message: Message) -> None:
        stream_for(message)  # fail in the trainer's call, not later on the loop
        self._buffer.append(message)

    def flush(self) -> int:
        """Publish everything buffered now; returns how many messages. Raises what publishing raised
        (``BusUnavailable`` after the bus's publish timeout)."""
        batch, self._buffer = self._buffer, []
        self._publish([Envelope(payload=m, run_id=self.run_id) for m in batch])
        return len(batch)

    def seal(self, mark: int) -> int:
        """Write everything buffered to the journal, as the boundary the checkpoint about to be written with
        ``mark`` commits; returns how many messages. Call :meth:`publish_sealed` once the checkpoint holds."""
        batch, self._buffer = self._buffer, []
        self._sealed = [Envelope(payload=m, run_id=self.run_id) for m in batch]
        if not self._sealed:
            return 0
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_bytes(msgspec.msgpack.encode({"mark": mark, "envelopes": [encode(e) for e in self._sealed]}))
        os.replace(tmp, self.journal)
        return len(self._sealed)

    def publish_sealed(self) -> int:
        """Publish the sealed boundary (its checkpoint is written), then drop its journal."""
        sealed, self._sealed = self._sealed, []
        self._publish(sealed)
        self.journal.unlink(missing_ok=True)
        return len(sealed)

    def recover(self, mark: int | None) -> int:
        """On open: publish the journal when the checkpoint (``mark``; None: no checkpoint) holds its boundary,
        else drop it (the boundary is redone); returns how many messages were published."""
        if not self.journal.is_file():
            return 0
        try:
            held: dict[str, Any] = msgspec.msgpack.decode(self.journal.read_bytes())
            envelopes = [decode(data) for data in held["envelopes"]]
            covered = held["mark"] == mark
        except (msgspec.DecodeError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"field 'journal': {str(self.journal)!r} does not decode: {exc}") from exc
        if covered:
            self._publish(envelopes)
        self.journal.unlink()
        return len(envelopes) if covered else 0

    def _publish(self, envelopes: list[Envelope[Message]]) -> None:
        if envelopes:
            asyncio.run_coroutine_threadsafe(publish_grouped(self.bus, envelopes), self.loop).result()
