"""One boundary, several decisions: the decide step asks a slotwise policy again about the slots it left."""

from __future__ import annotations

import dataclasses
import time

from esper.leyline import AdaptationDecision, DecisionAction, SeedStage, SeedStateReport, TrainingSignals
from esper.tamiyo.decide import decide_boundary, run_snapshot
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.safety import SafetyConfig, SafetyMonitor

PRICE = {"s1": 100, "s2": 100, "s3": 100}


def signals(*stages: SeedStage, epoch: int = 1) -> TrainingSignals:
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.0,
        val_loss=1.0,
        train_accuracy=0.5,
        val_accuracy=0.5,
        params_total=1000,
        seeds=[SeedStateReport(slot_id=f"s{i + 1}", stage=stage) for i, stage in enumerate(stages)],
    )


def growing(**overrides: object) -> HeuristicTamiyo:
    settings: dict[str, object] = {"per_slot": True, **overrides}
    config = HeuristicConfig(
        plateau_patience=0, max_active_seeds=3, candidates=(BlueprintChoice("conv_light"),), **settings
    )
    return HeuristicTamiyo(config, cost_model=lambda slot, _bp, _cfg: PRICE[slot])


def boundary(policy: object, sig: TrainingSignals, safety: SafetyMonitor | None = None, budget: int | None = None):
    snapshot = run_snapshot("run", sig, graph=None, telemetry_at=time.time(), param_budget=budget)
    snapshot = dataclasses.replace(snapshot, cost_model=lambda slot, _bp, _cfg: PRICE[slot])
    return decide_boundary(policy, sig, snapshot, safety or SafetyMonitor(SafetyConfig()))  # type: ignore[arg-type]


def test_every_dormant_slot_gets_its_germination_at_one_boundary_in_order() -> None:
    out = boundary(growing(), signals(SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT))
    assert [(d.decision.action, d.decision.slot_id) for d in out] == [
        (DecisionAction.GERMINATE, f"s{i}") for i in (1, 2, 3)
    ]
    assert [(d.decision.index, d.decision.count) for d in out] == [(0, 3), (1, 3), (2, 3)]
    assert [d.decision.decision_id for d in out] == ["heuristic-e1", "heuristic-e1.1", "heuristic-e1.2"]
    assert [d.command.command_id for d in out] == [f"run:e1:germinate:s{i}" for i in (1, 2, 3)]
    assert all(d.command.expected_stage is SeedStage.DORMANT for d in out)


def test_germinations_already_decided_count_against_the_budget_and_the_boundary_ends_with_a_wait() -> None:
    policy = growing(param_budget=1250)  # room for two seeds of 100 over 1,000... and a half
    out = boundary(policy, signals(SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT), budget=1250)
    assert [d.decision.action for d in out] == [DecisionAction.GERMINATE, DecisionAction.GERMINATE, DecisionAction.WAIT]
    assert out[-1].command is None and out[-1].decision.count == 3


def test_lifecycle_steps_of_different_slots_share_a_boundary_but_a_slot_gets_one() -> None:
    sig = signals(SeedStage.GERMINATED, SeedStage.DORMANT, SeedStage.FOSSILIZED, epoch=2)
    out = boundary(growing(), sig)
    # s1 advances (G1 passes at once) and is not advanced again in its projected TRAINING stage; s2 germinates
    assert [(d.decision.action, d.decision.slot_id) for d in out] == [
        (DecisionAction.ADVANCE, "s1"),
        (DecisionAction.GERMINATE, "s2"),
        (DecisionAction.WAIT, None),
    ]


def test_a_refusal_ends_the_boundary_and_is_kept_with_its_reason() -> None:
    safety = SafetyMonitor(SafetyConfig(max_active_seeds=1))
    out = boundary(growing(), signals(SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT), safety)
    assert len(out) == 2 and out[0].command is not None
    assert not out[1].decision.accepted and out[1].command is None and "active" in out[1].decision.rejection_reason


def test_a_policy_that_is_not_slotwise_makes_one_decision_per_boundary() -> None:
    policy = growing(per_slot=False)  # the heuristic's default
    out = boundary(policy, signals(SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT))
    assert [(d.decision.slot_id, d.decision.index, d.decision.count) for d in out] == [("s1", 0, 1)]


class Repeats:
    """A slotwise policy that ignores ``exclude`` and answers about s1 every time."""

    name = "repeats"
    slotwise = True

    def decide(self, signals, *, graph=None, health=None, exclude=frozenset()):  # type: ignore[no-untyped-def]
        return AdaptationDecision(
            decision_id="r", epoch=signals.epoch, action=DecisionAction.CULL, slot_id="s1", reason="x", confidence=1
        )

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {}

    def load_state_dict(self, state):  # type: ignore[no-untyped-def]
        return None


def test_an_answer_about_a_slot_already_acted_on_is_dropped() -> None:
    out = boundary(Repeats(), signals(SeedStage.TRAINING, SeedStage.TRAINING, epoch=4))
    assert [(d.decision.slot_id, d.decision.count) for d in out] == [("s1", 1)]


def test_the_tracker_sees_a_boundary_once_however_often_the_policy_is_asked() -> None:
    policy = growing()
    boundary(policy, signals(SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT))
    assert policy.tracker.epochs_seen == 1
