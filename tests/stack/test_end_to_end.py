"""A short job through the whole stack: Tamiyo decides from Tolaria's real telemetry, Tolaria applies, Nissa records;
and the same job trained in one process (``esper train``'s path) makes the same decisions and ends the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.cli.demo import run_demo
from esper.cli.stack import Stack
from esper.leyline import AdaptationDecision, CommandAction, CommandStatus, DecisionAction, TrainingJob, streams
from esper.tolaria.runs import run as train_in_process

from .harness import QUICK_JOB, TOKEN, StackClient

pytestmark = pytest.mark.slow


def _events(report: dict) -> list[tuple[int, str, str | None, str]]:
    return [(e["epoch"], e["slot"], e["blueprint"], e["to"]) for e in report["seed_events"]]


def test_the_demo_run_reports_tamiyos_decisions_applied_by_tolaria_and_matches_esper_train(
    stack: Stack, client: StackClient, tmp_path: Path
) -> None:
    # the per-slot heuristic: several decisions per boundary, each command awaited in lockstep (the harder case);
    # epochs of 2 steps (600 rows: a pass is 3 epochs), so once the seeds are fossilized a round spans a pass
    job = TrainingJob(**{**QUICK_JOB, "policy": "heuristic-per-slot", "steps_per_epoch": 2, "epochs": 24})
    printed: list[str] = []
    report_path = run_demo(stack, job, token=TOKEN, timeout_s=150, out=printed.append)
    report = json.loads(report_path.read_text())
    run_id = report["run_id"]
    assert report_path == stack.runs_dir / run_id / "report.json"
    assert report["epochs"] == job.epochs

    # Every boundary decided once, in lockstep (the last one's decisions may be skipped when Tamiyo learns
    # of the finish first), each boundary whole: one decision per slot at most, indexes 0..count-1 in
    # order, ids after the first '.<index>', commands '<run>:e<epoch>:<action>:<slot>'. Boundaries follow
    # every epoch while seeds are in flight, then one per pass (a round spans several epochs).
    published = [e.payload for e in client.messages(streams.CONTROL_DECISIONS, run_id)]
    assert all(isinstance(d, AdaptationDecision) for d in published)
    boundaries: list[list[AdaptationDecision]] = []
    for d in published:
        if d.index == 0:
            boundaries.append([])
        boundaries[-1].append(d)
    rounds = [r["epoch"] for r in report["history"]]
    assert [b[0].epoch for b in boundaries] in (rounds[:-1], rounds)
    assert rounds[:3] == [1, 2, 3] and any(r["span"] > 1 for r in report["history"]), rounds
    for b in boundaries:
        assert [(d.epoch, d.index, d.count) for d in b] == [(b[0].epoch, i, len(b)) for i in range(len(b))]
        assert [d.decision_id for d in b[1:]] == [f"{b[0].decision_id}.{i}" for i in range(1, len(b))]
        slots = [d.slot_id for d in b if d.slot_id is not None]
        assert len(slots) == len(set(slots)), b
        for d in b:
            assert d.command_id in (None, f"{run_id}:e{d.epoch}:{d.action.value}:{d.slot_id}"), d
    assert max(len(b) for b in boundaries) > 1, "no boundary decided more than one slot"
    # the report lists exactly those decisions, each with its reason and confidence
    decisions = report["decisions"]
    listed = [(d["epoch"], d["action"], d["slot"], d["command_id"]) for d in decisions]
    assert listed == [(d.epoch, d.action.value, d.slot_id, d.command_id) for d in published]
    assert all(d["reason"] and 0.0 <= d["confidence"] <= 1.0 for d in decisions)
    # every command a decision issued was applied at its boundary (its first answer)
    issued = [d for d in decisions if d["command_id"]]
    assert issued and all(d["command_status"] == CommandStatus.APPLIED.value for d in issued), issued
    germinations = [d for d in decisions if d["action"] == DecisionAction.GERMINATE.value]
    assert germinations, f"Tamiyo never germinated: {[(d['epoch'], d['action'], d['reason']) for d in decisions]}"
    first = germinations[0]
    assert first["accepted"] and first["command_status"] == CommandStatus.APPLIED.value
    assert first["slot"] and first["blueprint"]

    # Tolaria applied it: its result on the bus, and the seed's transitions in the report.
    applied = [r for r in client.results(run_id) if r.command_id == first["command_id"]]
    assert [(r.action, r.status) for r in applied] == [(CommandAction.GERMINATE, CommandStatus.APPLIED)]
    assert any(e["slot"] == first["slot"] and e["to"] == "GERMINATED" for e in report["seed_events"])
    assert report["params_final"] > report["params_initial"]

    # Nissa recorded all of it: the narrative in the report, the counts on /metrics.
    assert any("germinate" in line for line in report["narrative"])
    metrics = client.scrape("nissa")
    run = ("run_id", run_id)
    assert metrics[("esper_decisions_total", frozenset({run, ("action", DecisionAction.GERMINATE.value)}))] >= 1
    applied_label = frozenset({run, ("action", CommandAction.GERMINATE.value), ("status", CommandStatus.APPLIED.value)})
    assert metrics[("esper_commands_total", applied_label)] >= 1
    assert metrics[("esper_epoch", frozenset({run}))] == job.epochs
    assert 0.0 <= metrics[("esper_val_accuracy", frozenset({run}))] <= 1.0

    # Tamiyo's view agrees, and the terminal showed the progress.
    status = client.status(run_id)
    assert status["finished"] and status["epoch"] == job.epochs
    assert any("epoch" in line and "val acc" in line for line in printed)
    assert any(line.startswith("report: ") for line in printed)
    assert report["mode"] == "lockstep" and any("lockstep" in line for line in printed)

    # Parity: the same job in one process decides through the same step and ends the same.
    local = train_in_process(job, tmp_path / "in-process", progress=False)
    assert local["mode"] == "in-process"
    assert _events(local) == _events(report)
    assert [r["epoch"] for r in local["history"]] == rounds
    assert local["final_test_accuracy"] == report["final_test_accuracy"]
    assert local["params_final"] == report["params_final"]
