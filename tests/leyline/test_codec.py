"""The codec: every message round-trips; bad bytes only ever raise CodecError, naming the field."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.leyline import (
    MESSAGE_TYPES,
    CodecError,
    Envelope,
    SeedStage,
    SeedStateReport,
    TrainingSignals,
    decode,
    encode,
    encode_message,
    validate,
)

from .strategies import envelopes, for_struct

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def signals(**overrides: Any) -> TrainingSignals:
    fields: dict[str, Any] = dict(
        epoch=3,
        train_loss=0.5,
        val_loss=0.6,
        train_accuracy=0.8,
        val_accuracy=0.75,
        seeds=[SeedStateReport(slot_id="s1", stage=SeedStage.TRAINING, alpha=0.0)],
    )
    fields.update(overrides)
    return TrainingSignals(**fields)


def raw_of(message: TrainingSignals) -> dict[str, Any]:
    return msgpack.unpackb(encode_message(message, run_id="r1"))


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_every_message_type_round_trips_unchanged(message_type: str) -> None:
    @SETTINGS
    @given(envelopes(for_struct(MESSAGE_TYPES[message_type])))
    def check(envelope: Envelope[Any]) -> None:
        decoded = decode(encode(envelope))
        assert decoded == envelope
        assert type(decoded.payload) is type(envelope.payload)

    check()


@SETTINGS
@given(st.binary(max_size=256))
def test_random_bytes_decode_to_an_envelope_or_raise_codec_error(data: bytes) -> None:
    try:
        decoded = decode(data)
    except CodecError as exc:
        assert exc.field
    else:
        assert isinstance(decoded.payload, tuple(MESSAGE_TYPES.values()))


def _wrong_value_for(t: mi.Type) -> Any:
    """A value no field of type ``t`` accepts: a list, except where lists are valid (then a string)."""
    types = t.types if isinstance(t, mi.UnionType) else (t,)
    return "not a list" if any(isinstance(x, mi.ListType) for x in types) else []


def _payload_fields(message_type: str) -> list[mi.Field]:
    info = mi.type_info(MESSAGE_TYPES[message_type])
    assert isinstance(info, mi.StructType)
    return list(info.fields)


@SETTINGS
@given(envelopes(), st.data())
def test_a_payload_without_a_required_field_is_rejected_naming_it(envelope: Envelope[Any], data: st.DataObject) -> None:
    required = [f.encode_name for f in _payload_fields(envelope.payload.message_type) if f.required]
    if not required:
        return
    name = data.draw(st.sampled_from(required))
    raw = msgpack.unpackb(encode(envelope))
    del raw["payload"][name]
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == f"payload.{name}"
    assert err.value.problem.startswith("missing required field")


@SETTINGS
@given(envelopes(), st.data())
def test_a_payload_field_of_the_wrong_type_is_rejected_naming_it(envelope: Envelope[Any], data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(_payload_fields(envelope.payload.message_type)))
    raw = msgpack.unpackb(encode(envelope))
    raw["payload"][field.encode_name] = wrong = _wrong_value_for(field.type)
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == f"payload.{field.encode_name}"
    assert err.value.value == wrong


_ENVELOPE_KEYS = ("message_id", "message_type", "schema_version", "run_id", "produced_at", "trace_id", "payload")


@SETTINGS
@given(envelopes(), st.sampled_from(_ENVELOPE_KEYS), st.booleans())
def test_an_envelope_missing_or_mistyping_a_key_is_rejected(envelope: Envelope[Any], key: str, drop: bool) -> None:
    raw = msgpack.unpackb(encode(envelope))
    if drop:
        del raw[key]
    else:
        raw[key] = []
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field.split(".")[0] == key


@SETTINGS
@given(envelopes(), st.booleans())
def test_unknown_keys_are_ignored(envelope: Envelope[Any], in_payload: bool) -> None:
    raw = msgpack.unpackb(encode(envelope))
    target = raw["payload"] if in_payload else raw
    target["added_in_a_later_minor_version"] = {"nested": [1, 2]}
    assert decode(msgpack.packb(raw)) == envelope


def test_missing_field_is_named() -> None:
    raw = raw_of(signals())
    del raw["payload"]["val_loss"]
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "payload.val_loss"
    assert "missing" in str(err.value)


def test_wrongly_typed_nested_field_names_path_value_and_type() -> None:
    raw = raw_of(signals())
    raw["payload"]["seeds"][0]["alpha"] = "high"
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "payload.seeds.0.alpha"
    assert err.value.value == "high"
    text = str(err.value)
    assert "payload.seeds.0.alpha" in text and "'high'" in text and "str" in text and "float" in text


def test_constraint_violation_is_named() -> None:
    raw = raw_of(signals())
    raw["payload"]["epoch"] = -4
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "payload.epoch"
    assert err.value.value == -4


def test_unknown_message_type_is_rejected_by_name() -> None:
    raw = raw_of(signals())
    raw["message_type"] = "teleport"
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "message_type"
    assert err.value.value == "teleport"


def test_incompatible_major_version_is_rejected() -> None:
    raw = raw_of(signals())
    raw["schema_version"] = "2.0"
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "schema_version"
    assert "major version 2" in str(err.value)


def test_malformed_version_is_rejected() -> None:
    raw = raw_of(signals())
    raw["schema_version"] = "one"
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "schema_version"


def test_newer_minor_version_with_unknown_fields_is_read() -> None:
    raw = raw_of(signals())
    raw["schema_version"] = "1.7"
    raw["payload"]["field_from_the_future"] = {"anything": [1, 2]}
    raw["payload"]["seeds"][0]["another_new_field"] = 3
    raw["added_header"] = "ignored"
    decoded = decode(msgpack.packb(raw))
    assert decoded.payload == signals()
    assert decoded.schema_version == "1.7"


def test_missing_envelope_key_is_named() -> None:
    raw = raw_of(signals())
    del raw["run_id"]
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert err.value.field == "run_id"


def test_cross_field_rule_of_a_command_is_a_codec_error() -> None:
    raw = msgpack.unpackb(encode_message(signals(), run_id="r"))
    raw["message_type"] = "adaptation_command"
    raw["payload"] = {"command_id": "c1", "action": "germinate", "slot_id": "s1"}
    with pytest.raises(CodecError) as err:
        decode(msgpack.packb(raw))
    assert "blueprint" in str(err.value)


def test_non_bytes_input_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode("not bytes")  # type: ignore[arg-type]


def test_validate_names_the_field_of_a_message_built_in_python() -> None:
    with pytest.raises(CodecError) as err:
        validate(signals(epoch="seven"))
    assert err.value.field == "epoch" and err.value.value == "seven"
    assert validate(signals()) == signals()
