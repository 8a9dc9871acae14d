"""Search-then-distill chooses arms by validation accuracy per variant and plans their demonstrations."""

from __future__ import annotations

import pytest

from esper.simic.distill import best_arms, demonstration_plan


def run(policy: str, task: str, seed: int, val: float, test: float = 0.0) -> dict:
    return {"policy": policy, "task": task, "seed": seed, "val_accuracy": val, "test_accuracy": test}


def test_the_best_arms_of_each_variant_are_chosen_by_validation_never_test_accuracy():
    runs = [
        run("heuristic", "digits-1001", 0, 0.90, test=0.99),
        run("heuristic", "digits-1001", 1, 0.90, test=0.99),
        run("plan-HBB", "digits-1001", 0, 0.95),
        run("plan-HBB", "digits-1001", 1, 0.93),
        run("static", "digits-1001", 0, 0.92),
        run("static", "digits-1001", 1, 0.92),
        run("plan-LLL", "digits-1001", 0, 0.99),  # searched on one seed of two: does not compete
        run("heuristic", "mnist1d-1000", 0, 0.40),
        run("static", "mnist1d-1000", 0, 0.30),
    ]
    assert best_arms(runs, top=2) == {"digits-1001": ["plan-HBB", "static"], "mnist1d-1000": ["heuristic", "static"]}
    with pytest.raises(ValueError, match="field 'top'"):
        best_arms(runs, top=0)


def test_the_plan_records_each_chosen_arm_and_the_heuristic_once_on_every_seed():
    plan = demonstration_plan({"digits-1001": ["plan-HBB"], "mnist1d-1000": ["heuristic"]}, [0, 1], samples=600)
    names = [(arm.name, v.variant_id, seed) for arm, v, seed in plan]
    assert names == [
        ("plan-HBB", "digits-1001", 0),
        ("plan-HBB", "digits-1001", 1),
        ("heuristic", "digits-1001", 0),
        ("heuristic", "digits-1001", 1),
        ("heuristic", "mnist1d-1000", 0),
        ("heuristic", "mnist1d-1000", 1),
    ]
    assert plan[0][0].plan == "HBB" and plan[0][1].samples == 600


def test_the_shipped_distilled_policy_loads_and_decides_through_make_policy():
    from esper.leyline import TrainingJob
    from esper.simic.distill import DISTILLED_POLICY
    from esper.simic.env import EnvConfig, TamiyoEnv
    from esper.tamiyo.gnn.policy import GNNTamiyo
    from esper.tamiyo.policies import make_policy

    policy = make_policy(str(DISTILLED_POLICY), TrainingJob(epochs=10, param_budget=4_000))
    assert isinstance(policy, GNNTamiyo) and policy.slotwise
    env = TamiyoEnv(EnvConfig(epochs=3, pool=1, samples=600, max_train_samples=200))
    try:
        obs, _ = env.reset(seed=0)
        decision = policy.decide(obs.signals, graph=obs.graph, health=obs.health)
    finally:
        env.close()
    assert decision.reason.startswith("gnn:") and 0.0 <= decision.confidence <= 1.0
