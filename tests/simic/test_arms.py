"""Growth arms follow their plan, and recorded demonstrations are what the GNN policy would have seen and done."""

from __future__ import annotations

import pytest

from esper.leyline import DecisionAction
from esper.simic.arms import Arm, arm_named, default_arms
from esper.simic.demos import record_run, transitions
from esper.simic.env import EnvConfig
from esper.simic.variants import Variant
from esper.tamiyo.gnn.observation import OP_INDEX

GERM = OP_INDEX[DecisionAction.GERMINATE]
ENV = EnvConfig(epochs=4, max_train_samples=200, samples=600)
TASK = Variant("digits", 1_001, samples=600)


def test_a_plan_needs_known_letters_one_per_slot_naming_the_field():
    with pytest.raises(ValueError, match="field 'plan'"):
        Arm("x", plan="HXB")
    with pytest.raises(ValueError, match="field 'plan'"):
        Arm("x", plan="HB").policy(None)
    with pytest.raises(ValueError, match="field 'start'"):
        Arm("x", start=0)
    with pytest.raises(ValueError, match="field 'arm'"):
        arm_named("no-such-arm")
    assert arm_named("plan-BLH").plan == "BLH"
    assert arm_named("plan-BLH").per_slot is False
    per_slot = arm_named("plan-LLL-per-slot")
    assert (per_slot.plan, per_slot.per_slot, per_slot.name) == ("LLL", True, "plan-LLL-per-slot")
    assert len({a.name for a in default_arms()}) == len(default_arms())


def test_a_plan_arm_seeds_exactly_its_blueprints_one_slot_per_boundary():
    result, steps = record_run(Arm("plan-B-L", plan="B-L"), TASK, 0, ENV)
    germinated = {
        obs.graph.slots[slot].slot_id: obs.graph.slots[slot].options[option].blueprint
        for obs, (op, slot, option) in steps
        if op == GERM
    }
    assert germinated == {"s1": "bottleneck", "s3": "conv_light"}
    epochs = [obs.signals.epoch for obs, (op, _, _) in steps if op == GERM]
    assert epochs[0] == 1 and len(set(epochs)) == 2  # growth starts at epoch 1, one slot per boundary
    assert result.params > result.params_initial


def test_recorded_steps_are_one_per_question_asked_with_a_terminal_reward_only_at_the_end():
    result, steps = record_run(Arm("all-at-once", plan="BBB", per_slot=True), TASK, 0, ENV)
    first = [(op, slot) for obs, (op, slot, _) in steps if obs.signals.epoch == 1]
    assert first == [(GERM, 0), (GERM, 1), (GERM, 2)]  # the whole boundary, each slot asked in turn
    data = transitions(steps, result, 3, ENV)
    assert [t.done for t in data].count(True) == 1 and data[-1].done
    assert all(t.reward == 0.0 for t in data[:-1]) and data[-1].reward > 0
    assert {t.episode for t in data} == {3}


def test_the_recorder_answers_wait_when_asked_again_for_a_policy_that_decides_once():
    _, steps = record_run(Arm("heuristic"), TASK, 0, ENV)
    epochs = [obs.signals.epoch for obs, _ in steps]
    # one question per boundary, plus one re-ask (answered WAIT) after each acted-on boundary
    assert len(epochs) > len(set(epochs))
    for i in range(1, len(steps)):
        if epochs[i] == epochs[i - 1]:
            assert steps[i][1] == (0, 0, 0)
