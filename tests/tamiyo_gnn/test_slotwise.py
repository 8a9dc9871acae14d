"""The learned policy asked once per slot at a boundary: several seeds can start in one epoch."""

from __future__ import annotations

import time

import torch

from esper.leyline import DecisionAction
from esper.tamiyo.decide import decide_boundary, run_snapshot
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import OP_INDEX
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo
from esper.tamiyo.policies import DEFAULT_SAFETY
from esper.tamiyo.policy import is_slotwise
from esper.tamiyo.safety import SafetyMonitor

from .conftest import observe


def eager_network() -> TamiyoNetwork:
    """A network that wants to germinate, with a value ensemble that agrees (so its confidence is its p)."""
    torch.manual_seed(7)
    net = TamiyoNetwork(NetworkConfig(hidden=16))
    with torch.no_grad():
        net.op_head[-1].bias[OP_INDEX[DecisionAction.GERMINATE]] += 6.0
        net.value_head[-1].weight.zero_()
        net.value_head[-1].bias.zero_()
    return net


def boundary(policy: GNNTamiyo, graph) -> list:
    obs = observe(graph, epoch=1)
    run = run_snapshot("run-g", obs.signals, graph=graph, telemetry_at=time.time(), param_budget=None)
    return decide_boundary(policy, obs.signals, run, SafetyMonitor(DEFAULT_SAFETY), graph=graph)


def test_one_boundary_germinates_every_slot_once(conv_graph):
    policy = GNNTamiyo(eager_network(), GNNPolicyConfig(epochs_total=10))
    assert is_slotwise(policy)
    decided = boundary(policy, conv_graph)
    germinated = [d.decision.slot_id for d in decided if d.decision.action is DecisionAction.GERMINATE]
    assert sorted(germinated) == sorted(s.slot_id for s in conv_graph.slots)  # three seeds, three slots
    assert all(d.verdict.accepted and d.command is not None for d in decided)
    assert [d.decision.index for d in decided] == list(range(len(decided)))
    assert len(policy.state_dict()["losses"]) == 1  # asked three times, the epoch is in its history once


def test_asked_again_it_leaves_the_slots_acted_on_alone(conv_graph):
    policy = GNNTamiyo(eager_network(), GNNPolicyConfig(epochs_total=10))
    first = policy.decide(observe(conv_graph).signals, graph=conv_graph)
    others = frozenset(s.slot_id for s in conv_graph.slots) - {first.slot_id}
    again = policy.decide(observe(conv_graph).signals, graph=conv_graph, exclude=frozenset({first.slot_id}))
    assert again.slot_id in others
    everything = frozenset(s.slot_id for s in conv_graph.slots)
    last = policy.decide(observe(conv_graph).signals, graph=conv_graph, exclude=everything)
    assert last.action is DecisionAction.WAIT  # nothing left to act on


def test_one_decision_per_epoch_when_not_per_slot(conv_graph):
    policy = GNNTamiyo(eager_network(), GNNPolicyConfig(epochs_total=10, per_slot=False))
    assert not is_slotwise(policy)
    assert len(boundary(policy, conv_graph)) == 1
