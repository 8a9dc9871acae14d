"""A job submitted on the bus runs to its end: telemetry per epoch on the right streams, the report, run_finished."""

from __future__ import annotations

import json
from pathlib import Path

from esper.leyline import (
    AdaptationDecision,
    CommandAction,
    CommandStatus,
    LayerHealth,
    ModelGraph,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
    streams,
)

from .harness import Bus, InProcessTolaria, wait_until


def test_a_job_publishes_signals_and_health_each_epoch_and_ends_with_a_report(
    tolaria: InProcessTolaria, bus: Bus
) -> None:
    bus.submit("run-basic", epochs=3, policy="heuristic")
    finished = bus.wait_finished("run-basic")

    signals = bus.signals("run-basic")
    assert [s.epoch for s in signals] == [1, 2, 3]
    health = bus.messages(streams.TELEMETRY_HEALTH, "run-basic", LayerHealth)
    assert [h.epoch for h in health] == [1, 2, 3] and all(h.layers for h in health)
    # each stream carries only its own kind of message; the run's model graph comes before its first epoch
    training = [e.payload for e in bus.envelopes(streams.TELEMETRY_TRAINING, "run-basic")]
    assert [type(m) for m in training] == [ModelGraph, TrainingSignals, TrainingSignals, TrainingSignals]
    graph = training[0]
    assert (graph.epoch, graph.revision, graph.params_total) == (0, 0, 858)
    assert [s.slot_id for s in graph.slots] == ["s1", "s2", "s3"] and all(s.options for s in graph.slots)
    assert all(isinstance(e.payload, LayerHealth) for e in bus.envelopes(streams.TELEMETRY_HEALTH))
    assert all(isinstance(e.payload, SeedTransition | TelemetryEvent) for e in bus.envelopes(streams.TELEMETRY_EVENTS))
    # decisions come from Tamiyo only: Tolaria publishes none, not even WAITs
    assert bus.envelopes(streams.CONTROL_DECISIONS) == []

    report_path = Path(str(finished.attributes["report"]))
    assert report_path == tolaria.runs_dir / "run-basic" / "report.json"
    report = json.loads(report_path.read_text())
    assert report["epochs"] == 3 and report["policy"] == "heuristic"
    assert [r["epoch"] for r in report["history"]] == [1, 2, 3]
    assert (report_path.parent / "events.jsonl").is_file() and (report_path.parent / "curves.png").is_file()
    assert finished.attributes["final_test_accuracy"] == report["final_test_accuracy"]
    assert finished.attributes["best_test_accuracy"] == report["best_test_accuracy"]
    assert finished.attributes["params_final"] == report["params_final"]
    assert [s.val_accuracy for s in signals] == [r["val_accuracy"] for r in report["history"]]

    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the job to be acked")
    assert tolaria.sample("esper_tolaria_epochs_total") == 3
    assert tolaria.sample("esper_tolaria_active_runs") == 0


def test_a_job_that_cannot_run_is_answered_run_failed_naming_the_field(tolaria: InProcessTolaria, bus: Bus) -> None:
    bus.submit("run-bad", task="no_such_package.tasks:make_task", epochs=2)
    failed = wait_until(lambda: bus.events("run-bad", "run_failed"), 60, "run_failed")[0]
    assert "no_such_package.tasks:make_task" in failed.message and "task" in failed.message
    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the bad job to be acked")
    assert bus.signals("run-bad") == []


def test_a_command_for_an_unknown_run_is_rejected_and_acked(tolaria: InProcessTolaria, bus: Bus) -> None:
    bus.command("run-nobody", "cmd-x", CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light")
    result = wait_until(lambda: bus.result_of("run-nobody", "cmd-x"), 30, "a result")[0]
    assert result.status is CommandStatus.REJECTED and "unknown run" in result.reason
    assert result.action is CommandAction.GERMINATE and result.slot_id == "s1"
    wait_until(lambda: bus.pending(streams.CONTROL_COMMANDS) == 0, 10, "the command to be acked")
    assert tolaria.sample("esper_tolaria_commands_total", action="germinate", status="rejected") == 1


def test_the_job_is_acked_only_at_the_end_of_its_run(tolaria: InProcessTolaria, bus: Bus) -> None:
    bus.submit("run-ack", epochs=4)
    wait_until(lambda: bus.signals("run-ack"), 60, "the first epoch")
    assert bus.pending(streams.CONTROL_JOBS) == 1
    bus.wait_finished("run-ack")
    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the job to be acked")
    assert [s.epoch for s in bus.signals("run-ack")] == [1, 2, 3, 4]
    assert not any(isinstance(e.payload, AdaptationDecision) for e in bus.envelopes(streams.CONTROL_DECISIONS))
