"""The GNN policy: one network for hosts of different sizes and slot counts, masked factored actions."""

from __future__ import annotations

import msgspec
import torch

from esper.leyline import AdaptationDecision, DecisionAction, SeedStage, SeedStateReport
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import OP_INDEX, OPERATIONS, legal_actions
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo
from esper.tamiyo.policy import Policy

from .conftest import observe

GERM = OP_INDEX[DecisionAction.GERMINATE]


def mixed_batch(conv_graph, mlp_graph):
    live = {"s2": SeedStateReport(slot_id="s2", stage=SeedStage.TRAINING, epochs_in_stage=9, improvement=0.2)}
    return [observe(conv_graph), observe(mlp_graph, live), observe(conv_graph, live), observe(mlp_graph)]


def test_one_network_serves_a_3_slot_and_a_4_slot_host_in_one_batch(conv_graph, mlp_graph):
    torch.manual_seed(0)
    net = TamiyoNetwork(NetworkConfig(hidden=32))
    obs = mixed_batch(conv_graph, mlp_graph)
    graphs = net.encode(obs, update_stats=True)
    action, log_prob, entropy, value = net.get_action_and_value(graphs)
    assert action.shape == (4, 3) and log_prob.shape == entropy.shape == value.shape == (4,)
    assert torch.isfinite(log_prob).all() and torch.isfinite(entropy).all() and (entropy >= 0).all()
    _, again, _, value_again = net.get_action_and_value(graphs, action)
    assert torch.allclose(log_prob, again) and torch.allclose(value, value_again)


def test_sampled_actions_are_always_legal_and_point_inside_their_own_graph(conv_graph, mlp_graph):
    torch.manual_seed(1)
    net = TamiyoNetwork(NetworkConfig(hidden=32))
    obs = mixed_batch(conv_graph, mlp_graph)
    masks = [legal_actions(o) for o in obs]
    graphs = net.encode(obs)
    seen_slots: set[tuple[int, int]] = set()
    for _ in range(40):
        action, *_ = net.get_action_and_value(graphs)
        for (op, slot, option), legal, o in zip(action.tolist(), masks, obs, strict=True):
            assert legal.ops[op]
            if OPERATIONS[op] is not DecisionAction.WAIT:
                assert slot < len(o.graph.slots) and legal.slot_ops[slot][op]
                seen_slots.add((len(o.graph.slots), slot))
            if op == GERM:
                assert legal.options[slot][option]
    assert (4, 3) in seen_slots  # the pointer reaches the 4th slot of the MLP host


def test_masked_choices_get_no_probability_and_training_moves_the_choice(conv_graph, mlp_graph):
    torch.manual_seed(2)
    net = TamiyoNetwork(NetworkConfig(hidden=32))
    graphs = net.encode([observe(mlp_graph)])
    target = torch.tensor([[GERM, 3, 1]])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        _, log_prob, _, _ = net.get_action_and_value(graphs, target)
        first = first if first is not None else log_prob.item()
        optimizer.zero_grad()
        (-log_prob.mean()).backward()
        optimizer.step()
    assert float(log_prob) > first + 1.0
    out = net.evaluate(graphs, greedy=True)
    assert out["action"].tolist() == target.tolist()
    assert float(out["op_logits"][0, OP_INDEX[DecisionAction.CULL]]) < -1e8  # nothing to cull


def test_policy_decides_legal_graph_priced_germinations_and_restores_its_run_state(conv_graph, tmp_path):
    torch.manual_seed(3)
    policy = GNNTamiyo(TamiyoNetwork(NetworkConfig(hidden=32)), GNNPolicyConfig(epochs_total=10))
    assert isinstance(policy, Policy)
    net = policy.network
    net.train()
    obs = observe(conv_graph)
    graphs = net.encode([obs])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):  # teach it to germinate option 2 at s3
        _, log_prob, _, _ = net.get_action_and_value(graphs, torch.tensor([[GERM, 2, 2]]))
        optimizer.zero_grad()
        (-log_prob.mean()).backward()
        optimizer.step()
    net.eval()
    decision = policy.decide(obs.signals, graph=conv_graph)
    assert isinstance(decision, AdaptationDecision)
    option = conv_graph.slots[2].options[2]
    assert (decision.action, decision.slot_id, decision.blueprint) == ("germinate", "s3", option.blueprint)
    assert decision.blueprint_config == dict(option.config) and 0.3 < decision.confidence <= 1.0
    assert "s3" in decision.reason
    path = policy.save(tmp_path / "policy.pt")
    loaded = GNNTamiyo.load(path)
    loaded.load_state_dict(policy.state_dict())
    again = loaded.decide(obs.signals)  # the graph comes from the restored run state
    assert (again.action, again.slot_id, again.blueprint, again.confidence) == (
        decision.action,
        decision.slot_id,
        decision.blueprint,
        decision.confidence,
    )
    assert torch.equal(loaded.network.global_norm.mean, net.global_norm.mean)


def test_without_a_graph_the_policy_waits_and_says_why(conv_graph):
    decision = GNNTamiyo().decide(observe(conv_graph).signals)
    assert decision.action is DecisionAction.WAIT and "no model graph" in decision.reason


def test_the_single_graph_fast_path_agrees_with_the_batched_network(conv_graph, mlp_graph):
    torch.manual_seed(4)
    net = TamiyoNetwork(NetworkConfig(hidden=32))
    for obs in mixed_batch(conv_graph, mlp_graph):
        graph = net.encode([obs])[0]
        for _ in range(3):  # nudge towards germination so the slot and option heads are exercised
            batched = net.evaluate([graph], greedy=True)
            fast = net.decide_one(graph)
            assert fast["action"] == tuple(batched["action"][0].tolist())
            for key in ("p_op", "p_slot", "p_option", "value", "value_std"):
                assert abs(fast[key] - float(batched[key][0])) < 1e-5, key
            with torch.no_grad():
                net.op_head[-1].bias[GERM] += 3.0


def test_a_sampling_policy_draws_reproducibly_per_epoch(conv_graph):
    torch.manual_seed(5)
    net = TamiyoNetwork(NetworkConfig(hidden=32))
    obs = observe(conv_graph)

    def decisions(seed: int) -> list[tuple[str, str | None]]:
        policy = GNNTamiyo(net, GNNPolicyConfig(epochs_total=10, sample=True, sample_seed=seed))
        out = []
        for epoch in range(1, 13):
            signals = msgspec.structs.replace(obs.signals, epoch=epoch)
            d = policy.decision_for(obs._replace(signals=signals))
            out.append((d.action.value, d.slot_id))
        return out

    first = decisions(0)
    assert decisions(0) == first  # the same seed reproduces the run
    assert {a for a, _ in first} == {"wait", "germinate"}  # both legal operations get drawn at ~p=0.5
