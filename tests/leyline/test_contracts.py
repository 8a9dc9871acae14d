"""Leyline stays a contracts package: no torch, constants defined once, versions checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from esper.leyline import SCHEMA_VERSION, is_compatible, streams
from esper.leyline.version import parse_version


def test_leyline_does_not_import_torch() -> None:
    code = "import sys, esper.leyline, esper.leyline.jsonschema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stream_names_are_distinct_and_all_have_a_maxlen() -> None:
    assert len(set(streams.ALL_STREAMS)) == len(streams.ALL_STREAMS)
    assert all(name.startswith("esper.") for name in streams.ALL_STREAMS)
    assert set(streams.MAXLEN) == set(streams.ALL_STREAMS)


@pytest.mark.parametrize(
    ("producer", "consumer", "ok"),
    [("1.0", "1.0", True), ("1.4", "1.0", True), ("1.0", "1.9", True), ("2.0", "1.0", False), ("0.9", "1.0", False)],
)
def test_same_major_is_compatible(producer: str, consumer: str, ok: bool) -> None:
    assert is_compatible(producer, consumer) is ok


@pytest.mark.parametrize("bad", ["1", "1.x", "v1.0", "", "1.0.0"])
def test_malformed_versions_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="schema version"):
        parse_version(bad)


def test_current_version_parses() -> None:
    assert parse_version(SCHEMA_VERSION)[0] >= 1
