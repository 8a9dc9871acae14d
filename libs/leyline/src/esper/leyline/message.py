"""The base of every wire message and the registry of message types.

Messages are ``msgspec.Struct`` classes: typed, immutable, validated when
decoded, and fast enough through the codec for the per-epoch hot path
(``benchmarks/codec.py`` measures the round trip against raw msgpack).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

#: message type name -> message class; filled as message classes are defined.
MESSAGE_TYPES: dict[str, type[Message]] = {}


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A typed, immutable part of a message (a report inside a message, say).

    Readers ignore fields they do not know, so adding an optional field is a
    compatible (minor) schema change.
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (enums as their values), e.g. for JSON."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Message(Record, frozen=True, kw_only=True):
    """A wire message. Subclasses name themselves with ``message_type``."""

    message_type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("message_type")
        if name:
            if name in MESSAGE_TYPES and MESSAGE_TYPES[name] is not cls:
                raise TypeError(f"message type {name!r} is defined twice")
            MESSAGE_TYPES[name] = cls
