"""NarrativeWriter phrasing of each message kind, and its file."""

from __future__ import annotations

from pathlib import Path

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DeadLetter,
    DecisionAction,
    LayerHealth,
    LayerHealthReport,
    TelemetryEvent,
)
from esper.nissa import NarrativeWriter

from .scenario import RUN_A, T0, signals, wire


def tell(writer: NarrativeWriter, *messages: object) -> list[str]:
    out: list[str] = []
    for message in messages:
        out += writer.observe(wire(message, RUN_A, T0))  # type: ignore[arg-type]
    return out


def test_operator_override_command_is_told_with_who_and_why(tmp_path: Path) -> None:
    command = AdaptationCommand(
        command_id="0123456789abcdef", action=CommandAction.CULL, slot_id="s1", issued_by="operator",
        override=True, reason="manual cull from the control API", epoch=9,
    )  # fmt: skip
    assert tell(NarrativeWriter(tmp_path), command) == [
        "epoch 9: command 01234567 (cull s1) issued by operator overriding the safety monitor: "
        "manual cull from the control API"
    ]


def test_policy_commands_are_told_only_when_asked(tmp_path: Path) -> None:
    command = AdaptationCommand(command_id="c1", action=CommandAction.SET_ALPHA, slot_id="s2", alpha=0.25)
    assert tell(NarrativeWriter(tmp_path / "quiet"), command) == []
    (line,) = tell(NarrativeWriter(tmp_path / "loud", narrate_all_commands=True), command)
    assert "(set_alpha s2 to alpha 0.25) issued by policy" in line


def test_duplicate_result_is_told_as_ignored_and_uses_the_commands_description(tmp_path: Path) -> None:
    writer = NarrativeWriter(tmp_path)
    command = AdaptationCommand(command_id="c1", action=CommandAction.GERMINATE, slot_id="s3", blueprint="mlp_tiny")
    duplicate = CommandResult(command_id="c1", action=CommandAction.GERMINATE, status=CommandStatus.DUPLICATE, epoch=3)
    assert tell(writer, command, duplicate) == ["epoch 3: command c1 (germinate mlp_tiny in s3) ignored as a duplicate"]


def test_lines_without_an_epoch_take_the_runs_latest(tmp_path: Path) -> None:
    writer = NarrativeWriter(tmp_path)
    letter = DeadLetter(
        stream="esper.telemetry.training", entry_id="5-0", group="nissa", consumer="n1", deliveries=5,
        error_type="CodecError", error="field 'payload.epoch': bad", original=b"", dead_lettered_at=T0,
    )  # fmt: skip
    lines = tell(writer, signals(11), letter)
    assert lines == [
        "epoch 11: dead letter on esper.telemetry.training (entry 5-0, 5 deliveries to nissa/n1): "
        "CodecError: field 'payload.epoch': bad"
    ]


def test_layer_health_is_told_only_when_something_is_wrong(tmp_path: Path) -> None:
    writer = NarrativeWriter(tmp_path)
    healthy = LayerHealth(epoch=2, layers=[LayerHealthReport(layer="conv1", dead_ratio=0.1)])
    sick = LayerHealth(epoch=3, layers=[LayerHealthReport(layer="fc", dead_ratio=0.75, error_count=2)])
    assert tell(writer, healthy, sick) == ["epoch 3: layer health: fc 75% dead units; fc 2 errors"]


def test_each_entry_stays_on_one_line_even_with_newlines_in_reasons(tmp_path: Path) -> None:
    writer = NarrativeWriter(tmp_path)
    decision = AdaptationDecision(
        decision_id="d", epoch=4, action=DecisionAction.ADVANCE, slot_id="s1", reason="gate G2\npassed", confidence=1.0
    )
    tell(writer, decision, TelemetryEvent(kind="run_finished", epoch=4, attributes={"best": 0.91234}))
    assert writer.lines(RUN_A) == [
        "epoch 4: decided to advance s1 (confidence 1.00): gate G2 passed",
        "epoch 4: run_finished: best=0.9123",
    ]
    text = (tmp_path / RUN_A / "narrative.md").read_text()
    assert text == f"# Run {RUN_A}\n\n- " + "\n- ".join(writer.lines(RUN_A)) + "\n"


def test_a_new_writer_appends_to_the_existing_narrative(tmp_path: Path) -> None:
    event = TelemetryEvent(kind="checkpoint", epoch=1, message="saved")
    tell(NarrativeWriter(tmp_path), event)
    tell(NarrativeWriter(tmp_path), event)
    assert NarrativeWriter(tmp_path).lines(RUN_A) == ["epoch 1: checkpoint: saved"] * 2
    assert (tmp_path / RUN_A / "narrative.md").read_text().count("# Run") == 1


def test_messages_with_nothing_to_tell_write_no_file(tmp_path: Path) -> None:
    writer = NarrativeWriter(tmp_path)
    wait = AdaptationDecision(decision_id="d", epoch=0, action=DecisionAction.WAIT, reason="warming up", confidence=1)
    assert tell(writer, signals(0), wait) == []
    assert writer.lines(RUN_A) == []
    assert not (tmp_path / RUN_A).exists()
