"""Building the record a consumer writes to ``esper.dlq``."""

from __future__ import annotations

import time
from typing import Any

from esper.leyline import CodecError, DeadLetter, Envelope, decode, encode

#: run_id of a dead letter whose original could not be decoded.
UNKNOWN_RUN = "unknown"


def dead_letter_bytes(
    *,
    stream: str,
    entry_id: str,
    group: str,
    consumer: str,
    deliveries: int,
    error_type: str,
    error: str,
    original: bytes,
    envelope: Envelope[Any] | None = None,
) -> bytes:
    """Encode a :class:`DeadLetter` envelope for ``original``.

    It keeps the original's run id and trace id when the original decodes (pass
    ``envelope`` when it is already decoded), so a run's dead letters can be
    found by run id; otherwise the run id is ``"unknown"``.
    """
    if envelope is None:
        try:
            envelope = decode(original)
        except CodecError:
            envelope = None
    record = DeadLetter(
        stream=stream,
        entry_id=entry_id,
        group=group,
        consumer=consumer,
        deliveries=deliveries,
        error_type=error_type,
        error=error,
        original=bytes(original),
        dead_lettered_at=time.time(),
    )
    if envelope is None:
        return encode(Envelope(payload=record, run_id=UNKNOWN_RUN))
    return encode(Envelope(payload=record, run_id=envelope.run_id, trace_id=envelope.trace_id))
