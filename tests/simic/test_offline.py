"""Offline learning: decisions map to actions, returns are discounted per episode, AWR prefers what paid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esper.kasmina import ConvHost1D, wrap
from esper.kasmina.graph import describe
from esper.leyline import AdaptationDecision, DecisionAction, SeedStage, SeedStateReport, TrainingSignals
from esper.simic.offline import (
    OfflineConfig,
    Transition,
    action_for,
    discounted_returns,
    operation_weights,
    train_offline,
)
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import OP_INDEX, GraphObservation

GERM = OP_INDEX[DecisionAction.GERMINATE]


@pytest.fixture(scope="module")
def obs() -> GraphObservation:
    graph = describe(wrap(ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS), torch.randn(2, 40))
    signals = TrainingSignals(
        epoch=2,
        train_loss=1.0,
        val_loss=1.1,
        train_accuracy=0.6,
        val_accuracy=0.5,
        params_total=graph.params_total,
        seeds=[SeedStateReport(slot_id=s.slot_id, stage=SeedStage.DORMANT) for s in graph.slots],
    )
    return GraphObservation(graph, signals, None, (1.2, 1.1), (0.4, 0.5), graph.params_total, 10, None)


def decision(action: DecisionAction, slot: str | None = None, blueprint: str | None = None, config=None):
    return AdaptationDecision(
        decision_id="d",
        epoch=2,
        action=action,
        reason="test",
        confidence=1.0,
        slot_id=slot,
        blueprint=blueprint,
        blueprint_config=config or {},
    )


def test_a_decision_maps_to_the_graph_option_it_names_and_an_illegal_one_to_wait(obs):
    option = obs.graph.slots[1].options[2]
    germ = decision(DecisionAction.GERMINATE, "s2", option.blueprint, dict(option.config))
    assert action_for(germ, obs) == (GERM, 1, 2)
    assert action_for(decision(DecisionAction.GERMINATE, "s2", "no_such_blueprint"), obs) == (0, 0, 0)
    assert action_for(decision(DecisionAction.FOSSILIZE, "s1"), obs) == (0, 0, 0)  # nothing to fossilize
    assert action_for(decision(DecisionAction.WAIT), obs) == (0, 0, 0)


def test_returns_are_discounted_within_episodes_only(obs):
    data = [Transition(obs, (0, 0, 0), r, d, 0) for r, d in ((1.0, False), (2.0, True), (4.0, True))]
    assert discounted_returns(data, 0.5) == [2.0, 2.0, 4.0]


def test_awr_learns_to_prefer_the_action_that_was_rewarded(obs):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = []
    for i in range(48):  # the behaviour germinates at s1 or s3 at random; only s3 pays
        slot = int(rng.choice([0, 2]))
        data.append(Transition(obs, (GERM, slot, 1), 1.0 if slot == 2 else 0.0, True, i))
    net = TamiyoNetwork(NetworkConfig(hidden=32, value_heads=2))
    history = train_offline(net, data, OfflineConfig(epochs=15, batch_size=16, lr=3e-3))
    assert all(np.isfinite(list(h.values())).all() for h in history)
    greedy = net.evaluate(net.encode([obs]), greedy=True)["action"][0].tolist()
    assert greedy[:2] == [GERM, 2]
    assert history[-1]["imitation"] == 1.0  # germinate is the only operation the behaviour took


def test_offline_training_refuses_an_empty_dataset():
    with pytest.raises(ValueError, match="data"):
        train_offline(TamiyoNetwork(NetworkConfig(hidden=16)), [], OfflineConfig(epochs=1))


def test_operation_weights_give_every_operation_the_same_total_weight():
    ops = torch.tensor([0, 0, 0, 0, 0, 0, GERM, GERM])
    weights = operation_weights(ops)
    assert torch.isclose(weights.mean(), torch.tensor(1.0))
    assert torch.isclose(weights[ops == 0].sum(), weights[ops == GERM].sum())


def test_balanced_cloning_keeps_a_rare_growth_as_likely_as_the_frequent_wait(obs):
    # the behaviour waits 7 times in 10 and germinates 3 times, in the same state, for the same reward
    data = [Transition(obs, (0, 0, 0) if i < 7 else (GERM, 0, 1), 0.0, True, i) for i in range(10)]

    def p_germinate(balance: bool) -> float:
        torch.manual_seed(0)
        net = TamiyoNetwork(NetworkConfig(hidden=32, value_heads=2))
        history = train_offline(net, data, OfflineConfig(epochs=40, batch_size=10, lr=3e-3, balance=balance))
        assert 0.0 <= history[-1]["grow_recall"] <= 1.0
        with torch.no_grad():
            out = net.evaluate(net.encode([obs]), torch.tensor([[GERM, 0, 1]]))
        return float(out["p_op"][0])

    assert abs(p_germinate(False) - 0.3) < 0.1  # plain cloning: germinating stays the unlikely choice
    assert abs(p_germinate(True) - 0.5) < 0.1  # balanced: as likely as waiting
