"""Hypothesis strategies for every Leyline message, derived from the message types themselves.

Built from ``msgspec.inspect`` so a new field or constraint is covered without
touching the tests.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from esper.leyline import MESSAGE_TYPES, Envelope, Message

_FLOAT_MAX = 1e12


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -(2**40))
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**40)
        return st.integers(min_value=lo, max_value=hi)
    if isinstance(t, mi.FloatType):
        lo = next((b for b in (t.ge, t.gt) if b is not None), -_FLOAT_MAX)
        hi = next((b for b in (t.le, t.lt) if b is not None), _FLOAT_MAX)
        return st.floats(
            min_value=lo,
            max_value=hi,
            allow_nan=False,
            allow_infinity=False,
            exclude_min=t.gt is not None,
            exclude_max=t.lt is not None,
        )
    if isinstance(t, mi.StrType):
        if t.pattern:  # the regex alone can draw strings longer than the field allows
            lo, hi = t.min_length or 0, t.max_length if t.max_length is not None else float("inf")
            return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
        return st.text(min_size=t.min_length or 0, max_size=max(t.min_length or 0, min(24, t.max_length or 24)))
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=64)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.UnionType):
        return st.one_of(*(for_type(x) for x in t.types))
    if isinstance(t, mi.ListType):
        return st.lists(for_type(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(for_type(t.key_type), for_type(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return for_struct(t.cls)
    if isinstance(t, mi.AnyType):
        return st.one_of(st.none(), st.integers(), st.text(max_size=8))
    raise TypeError(f"no strategy for {t!r}")


def _build(cls: type[msgspec.Struct], kwargs: dict[str, Any]) -> msgspec.Struct | None:
    try:
        return cls(**kwargs)
    except (ValueError, TypeError):  # a cross-field rule (e.g. germinate needs a blueprint)
        return None


def for_struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.name: for_type(f.type) for f in info.fields if f.required}
    optional = {f.name: for_type(f.type) for f in info.fields if not f.required}
    kwargs = st.fixed_dictionaries(required, optional=optional)
    return kwargs.map(lambda kw: _build(cls, kw)).filter(lambda m: m is not None)


def messages() -> st.SearchStrategy[Message]:
    return st.one_of(*(for_struct(cls) for _, cls in sorted(MESSAGE_TYPES.items())))


def envelopes(message: st.SearchStrategy[Message] | None = None) -> st.SearchStrategy[Envelope[Message]]:
    return st.builds(
        Envelope,
        payload=message if message is not None else messages(),
        run_id=st.text(min_size=1, max_size=16),
        message_id=st.text(min_size=1, max_size=32),
        trace_id=st.text(min_size=1, max_size=32),
        produced_at=st.floats(min_value=0, max_value=4e9),
    )
