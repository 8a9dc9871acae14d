"""Nissa end to end on two interleaved runs: metrics, archive and narrative per profile."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from esper.leyline import (
    AdaptationCommand,
    CommandAction,
    CommandResult,
    CommandStatus,
    CompileRequest,
    DeadLetter,
    SeedStage,
    SeedStateReport,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.nissa import PROFILES, Nissa

from . import scenario
from .exposition import samples, value
from .scenario import RUN_A, RUN_B, T0, wire


def fed(tmp_path: Path, profile: str = "standard") -> Nissa:
    nissa = Nissa(tmp_path, profile=profile)
    for envelope in scenario.interleaved():
        nissa.handle(envelope)
    return nissa


def test_gauges_hold_the_last_epoch_of_each_run(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    assert value(nissa.metrics, "esper_val_accuracy", run_id=RUN_A) == pytest.approx(0.7)
    assert value(nissa.metrics, "esper_val_accuracy", run_id=RUN_B) == pytest.approx(0.8)
    assert value(nissa.metrics, "esper_train_accuracy", run_id=RUN_A) == pytest.approx(0.75)
    assert value(nissa.metrics, "esper_val_loss", run_id=RUN_A) == pytest.approx(1.1 - 0.2)
    assert value(nissa.metrics, "esper_train_loss", run_id=RUN_B) == pytest.approx(1.0 - 0.35)
    assert value(nissa.metrics, "esper_params", run_id=RUN_A) == 1_150
    assert value(nissa.metrics, "esper_epoch", run_id=RUN_A) == 5


def test_seeds_by_stage_count_every_stage_including_zeros(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    assert value(nissa.metrics, "esper_seeds", run_id=RUN_A, stage="training") == 1
    assert value(nissa.metrics, "esper_seeds", run_id=RUN_A, stage="blending") == 1
    assert value(nissa.metrics, "esper_seeds", run_id=RUN_A, stage="dormant") == 0
    assert value(nissa.metrics, "esper_seeds", run_id=RUN_B, stage="dormant") == 1
    stages = {dict(k[1])["stage"] for k in samples(nissa.metrics) if k[0] == "esper_seeds"}
    assert stages == {s.name.lower() for s in SeedStage}


def test_decisions_are_counted_by_action_and_rejections_by_reason_category(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    m = nissa.metrics
    assert value(m, "esper_decisions_total", run_id=RUN_A, action="germinate") == 1
    assert value(m, "esper_decisions_total", run_id=RUN_A, action="cull") == 1
    assert value(m, "esper_decisions_total", run_id=RUN_A, action="wait") == 1
    assert value(m, "esper_decisions_total", run_id=RUN_B, action="fossilize") == 1
    assert value(m, "esper_decisions_rejected_total", run_id=RUN_A, reason="embargo") == 1
    assert not [k for k in samples(m) if k[0] == "esper_decisions_rejected_total" and ("run_id", RUN_B) in k[1]]


def test_command_results_are_counted_by_action_and_status(tmp_path: Path) -> None:
    m = fed(tmp_path).metrics
    assert value(m, "esper_commands_total", run_id=RUN_A, action="germinate", status="applied") == 1
    assert value(m, "esper_commands_total", run_id=RUN_B, action="fossilize", status="rejected") == 1


def test_round_trip_histogram_observes_result_time_minus_command_time(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    m = nissa.metrics
    for run_id, seconds in ((RUN_A, scenario.ROUND_TRIP_A), (RUN_B, scenario.ROUND_TRIP_B)):
        assert value(m, "esper_command_round_trip_seconds_count", run_id=run_id) == 1
        assert value(m, "esper_command_round_trip_seconds_sum", run_id=run_id) == pytest.approx(seconds)
    assert value(m, "esper_command_round_trip_seconds_bucket", run_id=RUN_A, le="0.5") == 0
    assert value(m, "esper_command_round_trip_seconds_bucket", run_id=RUN_A, le="1.0") == 1
    assert value(m, "esper_command_round_trip_seconds_bucket", run_id=RUN_B, le="2.5") == 1
    assert nissa.metrics.pending_commands == 0


def test_transitions_and_events_are_counted(tmp_path: Path) -> None:
    m = fed(tmp_path).metrics
    assert value(m, "esper_seed_transitions_total", run_id=RUN_A, to_stage="germinated") == 1
    assert value(m, "esper_seed_transitions_total", run_id=RUN_A, to_stage="training") == 1
    assert value(m, "esper_events_total", run_id=RUN_A, kind="checkpoint") == 1


def test_archive_holds_every_message_of_each_run_in_order_under_research(tmp_path: Path) -> None:
    nissa = fed(tmp_path, "research")
    for run_id, sent in ((RUN_A, scenario.run_a()), (RUN_B, scenario.run_b())):
        archived = list(nissa.archive.read(run_id))
        assert [e.message_type for e in archived] == [e.message_type for e in sent]
        assert [e.produced_at for e in archived] == [e.produced_at for e in sent]
        assert all(e.run_id == run_id for e in archived)
    first = next(iter(nissa.archive.read(RUN_A)))
    assert first.payload["epoch"] == 0
    assert first.payload["seeds"][0]["stage"] == SeedStage.BLENDING.value


def test_minimal_archives_a_strict_subset_of_standard_and_standard_of_research(tmp_path: Path) -> None:
    counts = {}
    for name in ("minimal", "standard", "research"):
        nissa = fed(tmp_path / name, name)
        types = [e.message_type for e in nissa.archive.read(RUN_A)]
        counts[name] = len(types)
        if name == "minimal":
            assert "training_signals" not in types and "adaptation_decision" not in types
            assert {"seed_transition", "adaptation_command", "command_result", "telemetry_event"} <= set(types)
        if name == "standard":
            assert "training_signals" in types and "layer_health" not in types
        if name == "research":
            assert "layer_health" in types
    assert counts["minimal"] < counts["standard"] < counts["research"] == len(scenario.run_a())


def test_metrics_are_the_same_whatever_the_profile(tmp_path: Path) -> None:
    minimal, research = fed(tmp_path / "m", "minimal"), fed(tmp_path / "r", "research")
    for name in ("esper_val_accuracy", "esper_decisions_total", "esper_command_round_trip_seconds_sum"):
        a = {k: v for k, v in samples(minimal.metrics).items() if k[0] == name}
        b = {k: v for k, v in samples(research.metrics).items() if k[0] == name}
        assert a == b and a


def test_research_exports_per_slot_gauges_and_standard_does_not(tmp_path: Path) -> None:
    research, standard = fed(tmp_path / "r", "research"), fed(tmp_path / "s", "standard")
    assert value(research.metrics, "esper_seed_alpha", run_id=RUN_A, slot_id="s1") == 0.5
    assert value(research.metrics, "esper_seed_contribution", run_id=RUN_A, slot_id="s1") == -0.01
    assert not [k for k in samples(standard.metrics) if k[0] == "esper_seed_alpha"]


def test_narrative_tells_decisions_with_reasons_and_confidences(tmp_path: Path) -> None:
    lines = fed(tmp_path).narrative_lines(RUN_A)
    germinate = [line for line in lines if "germinate conv_light in s2" in line and "confidence" in line]
    assert germinate == [
        "epoch 3: validation loss flat for 3 epochs (plateau 3); decided to germinate conv_light in s2 "
        f"(confidence 0.60): {scenario.GERMINATE_REASON}"
    ]
    rejected = [line for line in lines if "rejected by the safety monitor" in line]
    assert len(rejected) == 1
    assert scenario.EMBARGO_REASON in rejected[0] and scenario.CULL_REASON in rejected[0]
    assert "confidence 0.55" in rejected[0] and rejected[0].startswith("epoch 5: ")
    assert "epoch 4: command cmd-a1 (germinate conv_light in s2) applied" in lines
    assert "epoch 4: s2 (conv_light) GERMINATED -> TRAINING: G1 passed: germinated [improvement=0.031]" in lines
    assert "epoch 5: checkpoint: checkpoint written" in lines
    assert not [line for line in lines if "waiting" in line]


def test_narrative_of_each_run_is_its_own_file(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    lines_b = nissa.narrative_lines(RUN_B)
    assert any(f"rejected by the trainer: {scenario.TRAINER_REJECTION}" in line for line in lines_b)
    assert not [line for line in lines_b if "conv_light" in line]
    assert (tmp_path / RUN_B / "narrative.md").read_text().startswith(f"# Run {RUN_B}\n")


def test_research_narrates_every_epoch_and_waits_and_minimal_writes_none(tmp_path: Path) -> None:
    research = fed(tmp_path / "r", "research").narrative_lines(RUN_A)
    assert sum(1 for line in research if "train loss" in line) == 6
    assert any("waiting (confidence 0.90): nothing to do" in line for line in research)
    minimal = fed(tmp_path / "m", "minimal")
    assert minimal.narrative_lines(RUN_A) == []
    assert not (tmp_path / "m" / RUN_A / "narrative.md").exists()


def test_redelivered_message_is_recorded_once(tmp_path: Path) -> None:
    nissa = Nissa(tmp_path)
    decision = scenario.run_a()[4]
    nissa.handle(decision)
    nissa.handle(decision)
    assert value(nissa.metrics, "esper_decisions_total", run_id=RUN_A, action="germinate") == 1
    assert len(list(nissa.archive.read(RUN_A))) == 1
    assert value(nissa.metrics, "esper_nissa_anomalies_total", kind="duplicate_delivery") == 1


def test_nan_accuracy_is_exported_as_nan_and_counted(tmp_path: Path) -> None:
    nissa = Nissa(tmp_path)
    nan = TrainingSignals(epoch=2, train_loss=math.nan, val_loss=math.inf, train_accuracy=0.1, val_accuracy=math.nan)
    nissa.handle(wire(nan, RUN_A, T0))
    assert math.isnan(value(nissa.metrics, "esper_val_accuracy", run_id=RUN_A))
    assert value(nissa.metrics, "esper_nissa_anomalies_total", kind="non_finite_value") == 3
    assert nissa.narrative_lines(RUN_A) == ["epoch 2: loss is not finite (train loss nan, val loss inf)"]
    (archived,) = nissa.archive.read(RUN_A)
    assert archived.payload["val_accuracy"] is None


def test_result_for_a_command_never_seen_is_counted_not_timed(tmp_path: Path) -> None:
    nissa = Nissa(tmp_path)
    result = CommandResult(command_id="ghost", action=CommandAction.CULL, status=CommandStatus.APPLIED, slot_id="s9")
    nissa.handle(wire(result, RUN_A, T0))
    assert value(nissa.metrics, "esper_nissa_anomalies_total", kind="unmatched_result") == 1
    assert value(nissa.metrics, "esper_commands_total", run_id=RUN_A, action="cull", status="applied") == 1
    assert not [k for k in samples(nissa.metrics) if k[0] == "esper_command_round_trip_seconds_count"]
    assert nissa.narrative_lines(RUN_A) == ["before the first epoch: command ghost (cull s9) applied"]


def test_result_published_before_its_command_counts_clock_skew(tmp_path: Path) -> None:
    nissa = Nissa(tmp_path)
    nissa.handle(wire(AdaptationCommand(command_id="c1", action=CommandAction.PAUSE), RUN_A, T0 + 5))
    nissa.handle(
        wire(CommandResult(command_id="c1", action=CommandAction.PAUSE, status=CommandStatus.APPLIED), RUN_A, T0)
    )
    assert value(nissa.metrics, "esper_nissa_anomalies_total", kind="clock_skew") == 1
    assert value(nissa.metrics, "esper_command_round_trip_seconds_sum", run_id=RUN_A) == 0


@pytest.mark.parametrize(
    "message",
    [
        SeedTransition(
            epoch=1, slot_id="no-such-slot", from_stage=SeedStage.DORMANT, to_stage=SeedStage.GERMINATED, reason=""
        ),
        TelemetryEvent(kind="", message=""),
        TrainingSignals(
            epoch=0,
            train_loss=0,
            val_loss=0,
            train_accuracy=0,
            val_accuracy=0,
            seeds=[SeedStateReport(slot_id="", stage=SeedStage.EMBARGOED)],
        ),
        DeadLetter(
            stream="esper.telemetry.training",
            entry_id="1-0",
            group="nissa",
            consumer="c",
            deliveries=5,
            error_type="CodecError",
            error="bad",
            original=b"\x00\xff",
            dead_lettered_at=T0,
        ),
        CompileRequest(request_id="r", blueprint_id="conv_light", input_shape=[1, 8, 40]),
        AdaptationCommand(
            command_id="op1",
            action=CommandAction.CULL,
            slot_id="s1",
            issued_by="operator",
            override=True,
            reason="manual",
        ),
    ],
    ids=lambda m: type(m).__name__,
)
def test_odd_but_valid_messages_do_not_raise_under_any_profile(tmp_path: Path, message: object) -> None:
    for name in PROFILES:
        nissa = Nissa(tmp_path / name, profile=name)
        nissa.handle(wire(message, RUN_A, T0))  # type: ignore[arg-type]
        assert value(nissa.metrics, "esper_nissa_messages_total", message_type=type(message).message_type) == 1


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "..", "", "a\\b"])
def test_unsafe_run_id_is_counted_and_nothing_is_written_outside_the_root(tmp_path: Path, run_id: str) -> None:
    root = tmp_path / "root"
    nissa = Nissa(root)
    for envelope in scenario.run_b():
        nissa.handle(wire(envelope.payload, run_id, envelope.produced_at))
    assert value(nissa.metrics, "esper_nissa_anomalies_total", kind="invalid_run_id") == 4
    assert value(nissa.metrics, "esper_decisions_total", run_id=run_id, action="fossilize") == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_archive_raises_so_the_bus_redelivers(tmp_path: Path) -> None:
    (tmp_path / RUN_A).write_text("a file where the run's folder should be")
    nissa = Nissa(tmp_path)
    envelope = scenario.run_a()[0]
    with pytest.raises(OSError):
        nissa.handle(envelope)
    assert not [k for k in samples(nissa.metrics) if k[0] == "esper_val_accuracy"]
    (tmp_path / RUN_A).unlink()
    nissa.handle(envelope)  # the redelivery is recorded, not mistaken for a duplicate
    assert len(list(nissa.archive.read(RUN_A))) == 1
    assert value(nissa.metrics, "esper_val_accuracy", run_id=RUN_A) == pytest.approx(0.6)


def test_unknown_profile_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'verbose'.*minimal, standard, research"):
        Nissa(tmp_path, profile="verbose")


def test_forget_run_drops_its_series_and_keeps_the_other_run(tmp_path: Path) -> None:
    nissa = fed(tmp_path)
    nissa.forget_run(RUN_A)
    runs = {dict(k[1]).get("run_id") for k in samples(nissa.metrics)}
    assert RUN_A not in runs and RUN_B in runs
    assert len(list(nissa.archive.read(RUN_A))) > 0
