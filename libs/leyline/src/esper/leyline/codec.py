"""Encode any Leyline message to msgpack bytes and decode bytes back to the typed model.

Decoding is total: whatever the bytes, :func:`decode` returns an
:class:`Envelope` or raises :class:`CodecError`, whose message names the field,
the value and what was expected. No other exception escapes.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from esper.leyline.envelope import Envelope
from esper.leyline.message import MESSAGE_TYPES, Message
from esper.leyline.version import SCHEMA_VERSION, is_compatible, parse_version

_MAX_VALUE_REPR = 80
M = TypeVar("M", bound=Message)
_MISSING = object()


class CodecError(ValueError):
    """Bytes that are not a valid envelope for this schema version.

    ``field`` is a dotted path (``payload.seeds.0.alpha``), ``value`` the offending
    value (None when it was missing).
    """

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        shown = repr(value)
        if len(shown) > _MAX_VALUE_REPR:
            shown = shown[: _MAX_VALUE_REPR - 3] + "..."
        super().__init__(f"field {field!r}: {problem} (value {shown}, type {type(value).__name__})")


class _Header(msgspec.Struct, frozen=True):
    """Envelope keys, with the payload left as raw bytes until its type is known."""

    message_id: str
    message_type: str
    schema_version: str
    run_id: str
    produced_at: float
    trace_id: str
    payload: msgspec.Raw


class _Out(msgspec.Struct, frozen=True):
    message_id: str
    message_type: str
    schema_version: str
    run_id: str
    produced_at: float
    trace_id: str
    payload: Message


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_any_decoder = msgspec.msgpack.Decoder()
_payload_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}


def _payload_decoder(message_type: str) -> msgspec.msgpack.Decoder[Any] | None:
    decoder = _payload_decoders.get(message_type)
    if decoder is None:
        model = MESSAGE_TYPES.get(message_type)
        if model is None:
            return None
        decoder = _payload_decoders[message_type] = msgspec.msgpack.Decoder(model)
    return decoder


def encode(envelope: Envelope[Any]) -> bytes:
    """Envelope -> msgpack bytes."""
    return _encoder.encode(
        _Out(
            envelope.message_id,
            envelope.payload.message_type,
            envelope.schema_version,
            envelope.run_id,
            envelope.produced_at,
            envelope.trace_id,
            envelope.payload,
        )
    )


def encode_message(message: Message, run_id: str, **envelope_fields: Any) -> bytes:
    """Wrap ``message`` in a new envelope and encode it."""
    return encode(Envelope(payload=message, run_id=run_id, **envelope_fields))


def validate(message: M) -> M:
    """Check a message built in Python against its declared types and constraints.

    Struct constructors do not type-check (decoding does). Producers that build
    messages from untrusted input (the HTTP API, configuration) call this first;
    it raises :class:`CodecError` naming the field and the value.
    """
    try:
        return msgspec.convert(msgspec.to_builtins(message, builtin_types=(bytes,)), type(message))
    except msgspec.ValidationError as exc:
        raise _explain(exc, msgspec.msgpack.encode(message), "", message.message_type) from None


def decode(data: bytes | bytearray | memoryview) -> Envelope[Message]:
    """msgpack bytes -> Envelope with its typed payload; :class:`CodecError` on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError("<bytes>", data, "expected bytes")
    try:
        header = _header_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(exc, data, "") from None
    except Exception as exc:  # msgspec.DecodeError and friends on garbage
        raise CodecError("<bytes>", bytes(data[:32]), f"not a msgpack envelope: {exc}") from None
    version = header.schema_version
    try:
        compatible = is_compatible(version, SCHEMA_VERSION)
    except ValueError as exc:
        raise CodecError("schema_version", version, str(exc)) from None
    if not compatible:
        major = parse_version(version)[0]
        raise CodecError("schema_version", version, f"major version {major} cannot be read by {SCHEMA_VERSION}")
    decoder = _payload_decoder(header.message_type)
    if decoder is None:
        raise CodecError("message_type", header.message_type, "unknown message type")
    try:
        payload = decoder.decode(header.payload)
    except msgspec.ValidationError as exc:
        raise _explain(exc, header.payload, "payload", header.message_type) from None
    except Exception as exc:
        raise CodecError("payload", bytes(header.payload)[:32], f"invalid {header.message_type}: {exc}") from None
    return Envelope(
        payload=payload,
        run_id=header.run_id,
        message_id=header.message_id,
        trace_id=header.trace_id,
        produced_at=header.produced_at,
        schema_version=version,
    )


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[(\"(?:[^\"]|\\\")*\"|'[^']*'|[^\]]*)\]")


def _explain(exc: msgspec.ValidationError, raw: Any, prefix: str, message_type: str | None = None) -> CodecError:
    """Turn msgspec's error into one that names the field path and the offending value."""
    match = _AT.match(str(exc))
    problem = match.group("problem") if match else str(exc)
    path = match.group("path") if match and match.group("path") else ""
    keys: list[str | int] = []
    for name, index, quoted in _PART.findall(path):
        if name:
            keys.append(name)
        elif index:
            keys.append(int(index))
        else:
            keys.append(quoted.strip("'\""))
    value: Any = _MISSING
    missing = _MISSING_FIELD.match(problem)
    if missing:
        keys.append(missing.group("name"))
        value, problem = None, "missing required field"
    else:
        value = _lookup(raw, keys)
    field = ".".join(str(k) for k in ([prefix] if prefix else []) + keys) or prefix or "<envelope>"
    if message_type:
        problem = f"{problem} in {message_type}"
    return CodecError(field, None if value is _MISSING else value, problem)


def _lookup(raw: Any, keys: list[str | int]) -> Any:
    try:
        node = _any_decoder.decode(raw)
        for key in keys:
            node = node[key]
        return node
    except Exception:
        return _MISSING
