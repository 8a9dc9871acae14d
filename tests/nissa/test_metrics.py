"""NissaMetrics on its own: private registries, the round-trip bookkeeping, forgetting a run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from esper.leyline import AdaptationCommand, CommandAction, CommandResult, CommandStatus
from esper.nissa import NissaMetrics

from .exposition import samples, value


def command(command_id: str) -> AdaptationCommand:
    return AdaptationCommand(command_id=command_id, action=CommandAction.PAUSE)


def result(command_id: str, status: CommandStatus = CommandStatus.APPLIED) -> CommandResult:
    return CommandResult(command_id=command_id, action=CommandAction.PAUSE, status=status)


def test_two_instances_do_not_share_series_nor_touch_the_global_registry() -> None:
    a, b = NissaMetrics(), NissaMetrics()
    a.record_command("r", command("c1"), 10.0)
    a.record_result("r", result("c1"), 11.0)
    assert value(a, "esper_commands_total", run_id="r", action="pause", status="applied") == 1
    assert not [k for k in samples(b) if k[0] == "esper_commands_total"]
    assert (
        REGISTRY.get_sample_value("esper_commands_total", {"run_id": "r", "action": "pause", "status": "applied"})
        is None
    )


def test_round_trip_is_timed_from_the_first_publication_of_a_command() -> None:
    m = NissaMetrics()
    m.record_command("r", command("c1"), 10.0)
    m.record_command("r", command("c1"), 12.0)  # re-published with the same idempotency key
    assert m.record_result("r", result("c1"), 13.0) == pytest.approx(3.0)
    assert m.record_result("r", result("c1", CommandStatus.DUPLICATE), 14.0) is None
    assert value(m, "esper_command_round_trip_seconds_count", run_id="r") == 1
    assert not [k for k in samples(m) if k[0] == "esper_nissa_anomalies_total"]


def test_pending_commands_are_bounded_and_the_oldest_forgotten() -> None:
    m = NissaMetrics(max_pending=2)
    for i, at in enumerate((1.0, 2.0, 3.0)):
        m.record_command("r", command(f"c{i}"), at)
    assert m.pending_commands == 2
    assert value(m, "esper_nissa_anomalies_total", kind="pending_command_evicted") == 1
    assert m.record_result("r", result("c0"), 5.0) is None
    assert m.record_result("r", result("c2"), 5.0) == pytest.approx(2.0)


def test_forget_run_drops_the_runs_series_and_pending_commands_only() -> None:
    m = NissaMetrics()
    for run in ("r1", "r2"):
        m.record_command(run, command(f"{run}-c"), 1.0)
        m.record_result(run, result("ghost"), 1.0)
    m.forget_run("r1")
    assert m.pending_commands == 1
    runs = {dict(labels).get("run_id") for _, labels in samples(m)}
    assert "r2" in runs and "r1" not in runs


def test_exposition_is_the_prometheus_text_format() -> None:
    text = NissaMetrics().exposition().decode()
    assert "# TYPE esper_command_round_trip_seconds histogram" in text
    assert "# TYPE esper_decisions_total counter" in text


def test_importing_nissa_does_not_import_torch() -> None:
    code = "import sys, esper.nissa; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
