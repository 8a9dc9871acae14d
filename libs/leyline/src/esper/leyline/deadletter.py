"""The record a consumer writes to ``esper.dlq`` for a message it could not handle."""

from __future__ import annotations

from typing import Annotated

import msgspec

from esper.leyline.message import Message


class DeadLetter(Message, frozen=True, kw_only=True):
    """``original`` is the entry's envelope field exactly as it was read."""

    message_type = "dead_letter"

    stream: str
    entry_id: str
    group: str
    consumer: str
    deliveries: Annotated[int, msgspec.Meta(ge=0)]
    error_type: str
    error: str
    original: bytes
    dead_lettered_at: float
