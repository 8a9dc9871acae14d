"""From a policy's decision to the command Tolaria applies."""

from esper.leyline import AdaptationDecision, DecisionAction, SeedStage, SeedStateReport, TrainingSignals
from esper.tamiyo.policy import decision_to_command, wait


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
    )


def test_the_command_carries_the_stage_the_decision_was_made_on() -> None:
    command = decision_to_command(advance(), signals())
    assert command is not None
    assert command.expected_stage is SeedStage.BLENDING and command.epoch == 5 and command.slot_id == "s1"
    assert command.reason == "G3 passes" and command.issued_by == "heuristic"


def test_without_signals_the_command_expects_no_stage() -> None:
    command = decision_to_command(advance())
    assert command is not None and command.expected_stage is None


def test_wait_and_rejected_decisions_become_no_command() -> None:
    assert decision_to_command(wait("heuristic", 5, "nothing to do"), signals()) is None
    assert decision_to_command(advance(accepted=False), signals()) is None
