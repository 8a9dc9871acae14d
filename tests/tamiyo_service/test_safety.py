"""SafetyMonitor: one test per rule, policy decisions and forced commands alike."""

from __future__ import annotations

import pytest

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    SeedStage,
    SeedStateReport,
)
from esper.tamiyo.safety import CATEGORIES, RunSnapshot, SafetyConfig, SafetyMonitor, Verdict

NOW = 1_000_000.0


def slots(**stages: SeedStage) -> dict[str, SeedStateReport]:
    return {name: SeedStateReport(slot_id=name, stage=stage) for name, stage in stages.items()}


def run(seeds=None, *, epoch=5, age=1.0, params=1000, budget=None, cost=None, paused=False) -> RunSnapshot:
    return RunSnapshot(
        run_id="r1",
        seeds=seeds if seeds is not None else slots(s1=SeedStage.DORMANT, s2=SeedStage.DORMANT),
        params_total=params,
        telemetry_epoch=epoch,
        telemetry_at=NOW - age,
        paused=paused,
        param_budget=budget,
        cost_model=cost,
    )


def decision(action=DecisionAction.GERMINATE, slot="s1", epoch=5, confidence=0.9, blueprint="conv_light"):
    return AdaptationDecision(
        decision_id="heuristic-e5",
        epoch=epoch,
        action=action,
        reason="test",
        confidence=confidence,
        slot_id=None if action is DecisionAction.WAIT else slot,
        blueprint=blueprint if action is DecisionAction.GERMINATE else None,
    )


def command(action=CommandAction.GERMINATE, slot="s1", blueprint="conv_light", epoch=5) -> AdaptationCommand:
    return AdaptationCommand(
        command_id="c1",
        action=action,
        slot_id=slot,
        blueprint=blueprint if action is CommandAction.GERMINATE else None,
        epoch=epoch,
        issued_by="operator",
    )


def check(action, snapshot, config=None) -> Verdict:
    return SafetyMonitor(config).validate(action, snapshot, now=NOW)


def test_a_legal_germination_on_fresh_telemetry_is_accepted():
    verdict = check(decision(), run())
    assert verdict == Verdict(True, "") and verdict.category is None


def test_wait_is_always_accepted_even_on_stale_telemetry():
    assert check(decision(DecisionAction.WAIT, confidence=0.0), run(age=1e6)).accepted


def test_run_control_commands_are_always_accepted():
    pause = AdaptationCommand(command_id="p", action=CommandAction.PAUSE)
    assert check(pause, RunSnapshot(run_id="r1")).accepted


@pytest.mark.parametrize(
    ("action", "stage"),
    [
        (DecisionAction.ADVANCE, SeedStage.DORMANT),
        (DecisionAction.ADVANCE, SeedStage.FOSSILIZED),
        (DecisionAction.ADVANCE, SeedStage.EMBARGOED),
        (DecisionAction.FOSSILIZE, SeedStage.TRAINING),
        (DecisionAction.CULL, SeedStage.DORMANT),
        (DecisionAction.CULL, SeedStage.FOSSILIZED),
        (DecisionAction.GERMINATE, SeedStage.TRAINING),
        (DecisionAction.GERMINATE, SeedStage.FOSSILIZED),
    ],
)
def test_illegal_transitions_are_rejected(action, stage):
    verdict = check(decision(action), run(slots(s1=stage)))
    assert not verdict.accepted and verdict.category == "illegal_transition"
    assert stage.name in verdict.reason


@pytest.mark.parametrize(
    ("action", "stage"),
    [
        (DecisionAction.ADVANCE, SeedStage.GERMINATED),
        (DecisionAction.ADVANCE, SeedStage.PROBATIONARY),
        (DecisionAction.FOSSILIZE, SeedStage.PROBATIONARY),
        (DecisionAction.CULL, SeedStage.BLENDING),
    ],
)
def test_legal_transitions_pass(action, stage):
    assert check(decision(action), run(slots(s1=stage))).accepted


def test_an_unknown_slot_is_an_illegal_transition_naming_the_known_slots():
    verdict = check(command(slot="s9"), run())
    assert verdict.category == "illegal_transition" and "s9" in verdict.reason and "s1, s2" in verdict.reason


@pytest.mark.parametrize("stage", [SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING])
def test_germinating_a_slot_under_embargo_is_rejected(stage):
    verdict = check(decision(), run(slots(s1=stage)))
    assert verdict.category == "embargo"


def test_germinating_a_dormant_slot_with_embargo_epochs_left_is_rejected():
    seeds = {"s1": SeedStateReport(slot_id="s1", stage=SeedStage.DORMANT, embargo_epochs_left=2)}
    verdict = check(command(), run(seeds))
    assert verdict.category == "embargo" and "2 embargo epoch" in verdict.reason


def test_germination_beyond_the_maximum_of_live_seeds_is_rejected():
    seeds = slots(s1=SeedStage.DORMANT, s2=SeedStage.TRAINING, s3=SeedStage.BLENDING)
    verdict = check(decision(), run(seeds), SafetyConfig(max_active_seeds=2))
    assert verdict.category == "max_active_seeds" and "s2, s3" in verdict.reason
    assert check(decision(), run(seeds), SafetyConfig(max_active_seeds=3)).accepted


def test_germination_over_the_parameter_budget_is_rejected():
    cost = {("s1", "conv_light"): 300}

    def model(slot, blueprint, config):
        return cost.get((slot, blueprint))

    verdict = check(decision(), run(params=1000, budget=1200, cost=model))
    assert verdict.category == "budget" and "1000 + 300 > budget 1200" in verdict.reason
    assert check(decision(), run(params=900, budget=1200, cost=model)).accepted


def test_the_default_budget_applies_when_the_run_has_none():
    verdict = check(decision(), run(budget=None, cost=lambda *a: 500), SafetyConfig(default_param_budget=1200))
    assert verdict.category == "budget"


def test_a_blueprint_the_graph_does_not_offer_at_the_slot_is_rejected():
    verdict = check(decision(), run(budget=None, cost=lambda *a: None))
    assert verdict.category == "blueprint" and "not offered at slot 's1'" in verdict.reason


def test_a_budget_without_a_cost_model_rejects_germination():
    assert check(decision(), run(budget=10_000, cost=None)).category == "budget"


def test_telemetry_older_than_the_max_age_is_stale():
    verdict = check(decision(), run(age=120.0), SafetyConfig(max_telemetry_age_s=60.0))
    assert verdict.category == "stale" and "120.0 s old" in verdict.reason


def test_a_paused_runs_telemetry_does_not_age():
    assert check(command(), run(age=1e4, paused=True)).accepted


def test_a_decision_on_a_superseded_epoch_is_stale():
    verdict = check(decision(epoch=3), run(epoch=5))
    assert verdict.category == "stale" and "epoch 3" in verdict.reason


def test_without_any_telemetry_slot_actions_are_stale():
    verdict = check(command(), RunSnapshot(run_id="r1"))
    assert verdict.category == "stale" and "no telemetry" in verdict.reason


def test_decisions_below_the_confidence_floor_are_rejected():
    verdict = check(decision(confidence=0.2), run(), SafetyConfig(min_confidence=0.5))
    assert verdict.category == "low_confidence" and "0.200 < floor 0.500" in verdict.reason
    assert check(decision(confidence=0.5), run(), SafetyConfig(min_confidence=0.5)).accepted


def test_forced_commands_have_no_confidence_to_check():
    assert check(command(), run(), SafetyConfig(min_confidence=1.0)).accepted


def test_forced_commands_pass_the_same_rules():
    assert check(command(CommandAction.ADVANCE), run(slots(s1=SeedStage.DORMANT))).category == "illegal_transition"


def test_set_alpha_is_legal_only_while_blending():
    cmd = AdaptationCommand(command_id="a", action=CommandAction.SET_ALPHA, slot_id="s1", alpha=0.5, epoch=5)
    assert check(cmd, run(slots(s1=SeedStage.BLENDING))).accepted
    assert check(cmd, run(slots(s1=SeedStage.TRAINING))).category == "illegal_transition"


def test_every_reason_starts_with_a_known_category():
    two = SafetyConfig(max_active_seeds=2)
    cases = [
        (decision(), run(age=1e6), None),
        (decision(confidence=0.0), run(), None),
        (decision(DecisionAction.CULL), run(), None),
        (decision(), run(slots(s1=SeedStage.EMBARGOED)), None),
        (decision(), run(slots(s1=SeedStage.DORMANT, s2=SeedStage.TRAINING, s3=SeedStage.TRAINING)), two),
        (decision(), run(cost=lambda *a: None), None),
        (decision(), run(budget=1, cost=lambda *a: 1), None),
    ]
    categories = [check(action, snapshot, config).category for action, snapshot, config in cases]
    assert categories == list(CATEGORIES)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_active_seeds", 0), ("max_telemetry_age_s", 0.0), ("min_confidence", 1.5), ("default_param_budget", 0)],
)
def test_bad_configuration_names_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"field '{field}'.*{value}"):
        SafetyConfig(**{field: value})
