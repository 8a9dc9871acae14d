"""The lean single-graph path: the same numbers as PyG's layers, edges reused only for the same graph."""

from __future__ import annotations

import msgspec
import torch
from torch_geometric.nn import GATv2Conv

from esper.leyline import DecisionAction
from esper.tamiyo.gnn.features import EDGE_FEATURES
from esper.tamiyo.gnn.inference import decide_one, gatv2, looped_edges
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.observation import OP_INDEX
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

from .conftest import observe


def test_gatv2_matches_pyg_with_self_loops_and_mean_filled_edge_features():
    torch.manual_seed(0)
    nodes = 9
    source = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 3])
    target = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3])  # a self loop (3 -> 3) PyG drops and re-adds
    edge_index = torch.stack([source, target])
    edge_attr = torch.randn(len(source), EDGE_FEATURES)
    x = torch.randn(nodes, 16)
    for concat in (False, True):
        conv = GATv2Conv(16, 8, heads=3, concat=concat, edge_dim=EDGE_FEATURES).eval()
        with torch.no_grad():
            conv.att.normal_()  # attention that is not uniform
            expected = conv(x, edge_index, edge_attr)
            got = gatv2(conv, x, looped_edges(edge_index, edge_attr, nodes))
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_looped_edges_are_reused_for_the_same_graph_only(conv_graph, mlp_graph):
    net = TamiyoNetwork(NetworkConfig(hidden=16))
    conv = net.encode([observe(conv_graph)])[0]
    _, edges = decide_one(net, conv)
    again = net.encode([observe(conv_graph, epoch=4)])[0]  # the next epoch: same structure, same edge tensors
    _, reused = decide_one(net, again, edges)
    assert reused is edges
    other = net.encode([observe(mlp_graph)])[0]
    first, rebuilt = decide_one(net, other, edges)
    assert rebuilt is not edges and rebuilt.nodes == other.x.shape[0]
    assert first == net.decide_one(other)  # stale edges were not used


def test_the_policy_decides_the_same_with_its_cached_edges_as_without(conv_graph):
    torch.manual_seed(3)
    net = TamiyoNetwork(NetworkConfig(hidden=16))
    with torch.no_grad():
        net.op_head[-1].bias[OP_INDEX[DecisionAction.GERMINATE]] += 2.0  # so the slot and option heads run
    policy = GNNTamiyo(net, GNNPolicyConfig(epochs_total=10))
    obs = observe(conv_graph)
    for epoch in (1, 2, 3):
        step = obs._replace(signals=msgspec.structs.replace(obs.signals, epoch=epoch))
        decision = policy.decision_for(step)
        expected = net.decide_one(net.encode([step])[0])
        assert decision.confidence == min(1.0, expected["p_op"] / (1.0 + expected["value_std"]))
    assert policy._edges is not None
