"""The per-slot Simic environment: asked again at a boundary as the deployed GNN policy is, the same returns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from esper.leyline import SeedStage
from esper.simic.distill import DISTILLED_POLICY
from esper.simic.env import EnvConfig, TamiyoEnv
from esper.simic.flat import FlatTamiyoEnv
from esper.simic.offline import action_for
from esper.simic.spaces import SlotQuestion
from esper.simic.train import GraphAgent
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

SMALL = EnvConfig(epochs=4, pool=1, max_train_samples=200, samples=600)
PER_SLOT = replace(SMALL, per_slot=True)
WAIT = [0, 0, 0]


def germinate(slot: int, option: int = 1) -> list[int]:  # option 1: bottleneck, 75 params (fits the budget)
    return [1, slot, option]


def meaningful(action: tuple[int, ...]) -> tuple[int, ...]:
    """The parts of an action that mean something: WAIT names no slot, only GERMINATE an option."""
    return action[:1] if action[0] == 0 else action if action[0] == 1 else action[:2]


def run(env: TamiyoEnv, actions: list[list[int]], gamma: float = 0.9) -> tuple[float, float, bool]:
    """The episode's undiscounted and discounted returns (discounted by ``gamma ** info["discount_steps"]``)."""
    total, discounted, weight, done = 0.0, 0.0, 1.0, False
    for action in actions:
        _, reward, done, _, info = env.step(np.array(action))
        total += reward
        discounted += weight * reward
        weight *= gamma ** info["discount_steps"]
    return total, discounted, done


def test_per_slot_one_boundary_germinates_every_slot_before_the_next_epoch_trains():
    env = TamiyoEnv(PER_SLOT)
    try:
        question, _ = env.reset(seed=0, options={"variant": 0})
        assert isinstance(question, SlotQuestion) and question.exclude == frozenset()
        start_params = question.observation.signals.params_total

        question, reward, done, _, info = env.step(np.array(germinate(0)))
        assert info["discount_steps"] == 0  # no time passed: the same boundary
        assert (question.exclude, question.observation.signals.epoch, reward, done) == (
            frozenset({"s1"}),
            1,
            0.0,
            False,
        )
        seen = question.observation.signals  # the decide step's view: s1 as its germination leaves it
        assert seen.seeds[0].stage is SeedStage.GERMINATED and seen.params_total == start_params + 75
        assert info["legal_ops"][1]  # germinating another slot is still legal

        question, reward, _, _, _ = env.step(np.array(germinate(1)))
        assert question.exclude == frozenset({"s1", "s2"}) and reward == 0.0

        question, reward, done, _, info = env.step(np.array(germinate(2)))  # every slot acted on: epoch 2 trains
        assert info["discount_steps"] == 1
        assert question.exclude == frozenset() and question.observation.signals.epoch == 2 and reward != 0.0
        assert all(r.stage is not SeedStage.DORMANT for r in question.observation.signals.seeds)
        first = [d for d in env.trainer.decisions if d.epoch == 1]
        assert [(d.slot_id, d.accepted, d.index, d.count) for d in first] == [
            ("s1", True, 0, 3),
            ("s2", True, 1, 3),
            ("s3", True, 2, 3),
        ]
    finally:
        env.close()


def test_per_slot_a_wait_ends_the_boundary_and_an_excluded_slot_allows_nothing():
    env = FlatTamiyoEnv(PER_SLOT)
    try:
        env.reset(seed=0, options={"variant": 0})
        _, reward, _, _, info = env.step(np.array(germinate(1)))
        mask = info["action_mask"]
        assert reward == 0.0 and not mask["slot_ops"][1].any() and mask["slot_ops"][0][1] and mask["slot_ops"][2][1]
        _, reward, _, _, info = env.step(np.array(WAIT))
        assert info["epoch"] == 2 and reward != 0.0 and info["action_mask"]["slot_ops"][1].any()  # s2: CULL
    finally:
        env.close()


def test_per_slot_returns_equal_the_once_per_epoch_returns_for_the_same_decisions():
    per_epoch = [germinate(0), germinate(1), WAIT]
    per_slot = [germinate(0), WAIT, germinate(1), WAIT, WAIT]
    totals, discounted, finals = [], [], []
    for config, actions in ((SMALL, per_epoch), (PER_SLOT, per_slot)):
        env = TamiyoEnv(config)
        try:
            env.reset(seed=5, options={"variant": 0, "run_seed": 11})
            total, discounted_total, done = run(env, actions)
            assert done
            totals.append(total)
            discounted.append(discounted_total)
            finals.append(env.trainer.history[-1].val_accuracy)
        finally:
            env.close()
    assert finals[0] == finals[1]  # the same run
    assert totals[1] == pytest.approx(totals[0], abs=1e-9)
    assert discounted[1] == pytest.approx(discounted[0], abs=1e-9)  # time passes per epoch, not per question


def test_a_repeated_question_gets_the_deployed_policys_answer():
    env = TamiyoEnv(PER_SLOT)
    network = GNNTamiyo.load(DISTILLED_POLICY).network
    agent = GraphAgent(network)
    try:
        question, _ = env.reset(seed=0, options={"variant": 0})
        deployed = GNNTamiyo(network, GNNPolicyConfig(epochs_total=PER_SLOT.epochs, param_budget=env.param_budget))
        asked = 0
        for _ in range(6):
            obs = question.observation
            decision = deployed.decide(obs.signals, graph=obs.graph, health=obs.health, exclude=question.exclude)
            with torch.no_grad():
                greedy = network.evaluate(agent.encode([question]), greedy=True)["action"][0]
            assert meaningful(tuple(greedy.tolist())) == meaningful(action_for(decision, obs))
            asked += bool(question.exclude)
            question, _, done, _, _ = env.step(greedy.numpy())
            if done:
                break
        assert asked >= 1  # the policy was asked again at some boundary
    finally:
        env.close()
