"""The per-run JSONL archive: append-only, one complete line per envelope, readable back, safe run ids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esper.leyline import DeadLetter, SeedStage, SeedTransition, TrainingSignals
from esper.nissa import ArchiveFormatError, InvalidRunIdError, RunArchive

from .scenario import RUN_A, RUN_B, T0, run_a, wire


def test_every_line_is_a_json_object_with_the_envelope_fields_and_payload(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    sent = run_a()
    for envelope in sent:
        archive.append(envelope)
    lines = (tmp_path / RUN_A / "events.jsonl").read_text().splitlines()
    assert len(lines) == len(sent)
    for line, envelope in zip(lines, sent, strict=True):
        record = json.loads(line)
        assert record["message_type"] == envelope.message_type
        assert record["message_id"] == envelope.message_id
        assert record["trace_id"] == envelope.trace_id
        assert record["produced_at"] == envelope.produced_at
        assert record["payload"] == envelope.payload.to_dict()


def test_each_append_is_on_disk_before_append_returns(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    for count, envelope in enumerate(run_a()[:3], start=1):
        archive.append(envelope)
        assert len((tmp_path / RUN_A / "events.jsonl").read_bytes().splitlines()) == count


def test_read_returns_what_was_appended_per_run(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    transition = SeedTransition(
        epoch=4, slot_id="s2", from_stage=SeedStage.DORMANT, to_stage=SeedStage.GERMINATED, reason="G0"
    )
    archive.append(wire(transition, RUN_A, T0))
    archive.append(wire(transition, RUN_B, T0 + 1))
    (a,) = archive.read(RUN_A)
    assert a.run_id == RUN_A and a.produced_at == T0
    assert a.payload == transition.to_dict() and a.payload["to_stage"] == SeedStage.GERMINATED.value
    assert archive.runs() == [RUN_A, RUN_B]
    assert list(archive.read("never-seen")) == []


def test_appending_after_a_restart_keeps_earlier_lines(tmp_path: Path) -> None:
    first, second = run_a()[:2]
    RunArchive(tmp_path).append(first)
    RunArchive(tmp_path).append(second)
    assert [e.message_id for e in RunArchive(tmp_path).read(RUN_A)] == [first.message_id, second.message_id]


def test_non_finite_floats_are_archived_as_null_and_bytes_as_base64(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    nan = TrainingSignals(epoch=1, train_loss=math.inf, val_loss=1.0, train_accuracy=0.5, val_accuracy=math.nan)
    letter = DeadLetter(
        stream="s", entry_id="1-0", group="g", consumer="c", deliveries=1, error_type="E", error="e",
        original=b"\x81\xa1m\x00", dead_lettered_at=T0,
    )  # fmt: skip
    archive.append(wire(nan, RUN_A, T0))
    archive.append(wire(letter, RUN_A, T0))
    signals, dead = archive.read(RUN_A)
    assert signals.payload["train_loss"] is None and signals.payload["val_accuracy"] is None
    assert dead.payload["original"] == "gaFtAA=="


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    first = run_a()[0]
    archive.append(first)
    with archive.path(RUN_A).open("ab") as handle:
        handle.write(b'{"message_type": "training_sig')
    assert [e.message_id for e in archive.read(RUN_A)] == [first.message_id]


def test_a_corrupt_line_in_the_middle_raises_naming_file_and_line(tmp_path: Path) -> None:
    archive = RunArchive(tmp_path)
    archive.append(run_a()[0])
    with archive.path(RUN_A).open("ab") as handle:
        handle.write(b"not json\n")
    archive.append(run_a()[1])
    with pytest.raises(ArchiveFormatError, match=r"events.jsonl, line 2"):
        list(archive.read(RUN_A))


@pytest.mark.parametrize("run_id", ["../outside", "a/b", "..", ".", ".hidden", "", " padded", "a\\b", "x\x00y"])
def test_unsafe_run_id_is_rejected_naming_the_value(tmp_path: Path, run_id: str) -> None:
    archive = RunArchive(tmp_path / "root")
    with pytest.raises(InvalidRunIdError, match=r"field 'run_id'") as caught:
        archive.append(wire(run_a()[0].payload, run_id, T0))
    assert repr(run_id) in str(caught.value)
    with pytest.raises(InvalidRunIdError):
        list(archive.read(run_id))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("run_id", ["run-a", "2024-05-01T12.00_mnist1d", "r" * 200, "ünïcode"])
def test_ordinary_run_ids_are_accepted(tmp_path: Path, run_id: str) -> None:
    archive = RunArchive(tmp_path)
    archive.append(wire(run_a()[0].payload, run_id, T0))
    assert len(list(archive.read(run_id))) == 1
