"""The envelope every message travels in.

On the wire an envelope is a msgpack map with exactly the keys in
``ENVELOPE_KEYS`` (see ``proto/envelope.schema.json``); ``payload`` is the map
of the message that ``message_type`` names.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Generic, TypeVar

import msgspec

from esper.leyline.message import Message
from esper.leyline.version import SCHEMA_VERSION

ENVELOPE_KEYS = ("message_id", "message_type", "schema_version", "run_id", "produced_at", "trace_id", "payload")

M = TypeVar("M", bound=Message)


def new_id() -> str:
    return uuid.uuid4().hex


class Envelope(msgspec.Struct, Generic[M], frozen=True, kw_only=True):
    """A typed message with what every consumer needs to route and trust it."""

    payload: M
    run_id: str
    message_id: str = msgspec.field(default_factory=new_id)
    trace_id: str = msgspec.field(default_factory=new_id)
    produced_at: float = msgspec.field(default_factory=time.time)
    schema_version: str = SCHEMA_VERSION

    @property
    def message_type(self) -> str:
        return self.payload.message_type


class WireEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope as it is on the wire: the schema non-Python readers follow."""

    message_id: str
    message_type: str
    schema_version: str
    run_id: str
    produced_at: float
    trace_id: str
    payload: dict[str, Any]
