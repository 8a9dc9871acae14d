"""From a policy's decision to the command Tolaria applies: the one decide step."""

import msgspec

from esper.leyline import AdaptationDecision, DecisionAction, SeedStage, SeedStateReport, TrainingSignals
from esper.tamiyo.decide import command_id, decide, run_snapshot, to_command
from esper.tamiyo.policy import StaticPolicy, wait
from esper.tamiyo.safety import SafetyConfig, SafetyMonitor


def signals() -> TrainingSignals:
    return TrainingSignals(
        epoch=5,
        train_loss=0.5,
        val_loss=0.6,
        train_accuracy=0.8,
        val_accuracy=0.7,
        seeds=[
            SeedStateReport(slot_id="s1", stage=SeedStage.BLENDING),
            SeedStateReport(slot_id="s2", stage=SeedStage.DORMANT),
        ],
    )


def advance(accepted: bool = True) -> AdaptationDecision:
    return AdaptationDecision(
        decision_id="d5",
        epoch=5,
        action=DecisionAction.ADVANCE,
        slot_id="s1",
        reason="G3 passes",
        confidence=0.9,
        accepted=accepted,
        command_id="run-1:e5:advance:s1",
    )


class Fixed:
    """A policy that always answers ``decision``."""

    name = "fixed"

    def __init__(self, decision: AdaptationDecision) -> None:
        self.decision = decision

    def decide(self, signals, *, graph=None, health=None):  # type: ignore[no-untyped-def]
        return msgspec.structs.replace(self.decision, command_id=None)

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {}

    def load_state_dict(self, state):  # type: ignore[no-untyped-def]
        return None


def test_the_command_carries_the_stage_the_decision_was_made_on() -> None:
    command = to_command(advance(), signals())
    assert command is not None
    assert command.expected_stage is SeedStage.BLENDING and command.epoch == 5 and command.slot_id == "s1"
    assert command.reason == "G3 passes" and command.issued_by == "heuristic"
    assert command.command_id == "run-1:e5:advance:s1"


def test_wait_and_rejected_decisions_become_no_command() -> None:
    assert to_command(wait("heuristic", 5, "nothing to do"), signals()) is None
    assert to_command(advance(accepted=False), signals()) is None


def test_decide_gives_an_accepted_decision_its_deterministic_command_id() -> None:
    snapshot = run_snapshot("run-1", signals(), graph=None, telemetry_at=1000.0)
    decided = decide(Fixed(advance()), signals(), snapshot, SafetyMonitor(), now=1001.0)
    assert decided.verdict.accepted and decided.decision.command_id == command_id("run-1", decided.decision)
    assert decided.command is not None and decided.command.command_id == "run-1:e5:advance:s1"
    again = decide(Fixed(advance()), signals(), snapshot, SafetyMonitor(), now=1002.0)
    assert again.command is not None and again.command.command_id == decided.command.command_id


def test_decide_keeps_a_rejected_decision_with_the_reason_and_no_command() -> None:
    snapshot = run_snapshot("run-1", signals(), graph=None, telemetry_at=1000.0)
    late = decide(Fixed(advance()), signals(), snapshot, SafetyMonitor(SafetyConfig(max_telemetry_age_s=5)), now=2000.0)
    assert not late.decision.accepted and late.decision.rejection_reason.startswith("stale:")
    assert late.command is None and late.decision.command_id is None


def test_a_wait_passes_and_carries_no_command_id() -> None:
    snapshot = run_snapshot("run-1", signals(), graph=None, telemetry_at=1000.0)
    decided = decide(StaticPolicy(), signals(), snapshot, SafetyMonitor(), now=1000.0)
    assert decided.verdict.accepted and decided.command is None and decided.decision.command_id is None
