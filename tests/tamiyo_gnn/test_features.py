"""Featurizing Leyline messages into a PyG graph, and the legal-action masks."""

from __future__ import annotations

import pytest
import torch

from esper.leyline import (
    DecisionAction,
    GraphEdge,
    GraphNode,
    LayerHealth,
    LayerHealthReport,
    ModelGraph,
    NodeKind,
    SeedStage,
    SeedStateReport,
)
from esper.tamiyo.gnn.features import EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, RunningNorm, featurize
from esper.tamiyo.gnn.observation import OP_INDEX, legal_actions

from .conftest import observe

GERM, ADV, CULL, FOSS = (OP_INDEX[a] for a in ("germinate", "advance", "cull", "fossilize"))


@pytest.mark.parametrize("host", ["conv_graph", "mlp_graph"])
def test_nodes_are_layers_and_slots_and_edges_run_both_ways(host, request):
    graph = request.getfixturevalue(host)
    data = featurize(observe(graph))
    assert data.x.shape == (len(graph.nodes), NODE_FEATURES)
    assert data.edge_index.shape == (2, 2 * len(graph.edges))
    assert data.edge_attr.shape == (2 * len(graph.edges), EDGE_FEATURES)
    assert data.u.shape == (1, GLOBAL_FEATURES)
    ids = [graph.nodes[i].slot_id for i in data.slot_index.tolist()]
    assert ids == [s.slot_id for s in graph.slots]
    assert data.option_x.shape[0] == sum(len(s.options) for s in graph.slots)


def test_a_hand_built_graph_with_one_slot_featurizes():
    graph = ModelGraph(
        epoch=0,
        params_total=100,
        nodes=[
            GraphNode(node_id="input", kind=NodeKind.INPUT, op="input", shape=[4]),
            GraphNode(node_id="fc", kind=NodeKind.LAYER, op="Linear", shape=[8], params=40),
            GraphNode(node_id="slot:a", kind=NodeKind.SLOT, op="slot", shape=[8], slot_id="a", module="fc"),
            GraphNode(node_id="output", kind=NodeKind.OUTPUT, op="output", shape=[8]),
        ],
        edges=[
            GraphEdge(source="input", target="fc"),
            GraphEdge(source="fc", target="slot:a"),
            GraphEdge(source="slot:a", target="output"),
        ],
        slots=[],
    )
    data = featurize(observe(graph))
    assert data.slot_index.numel() == 0 and data.x.shape[0] == 4
    assert data.op_mask.tolist() == [[True, False, False, False, False]]


def test_unknown_edge_endpoint_is_named():
    bad = ModelGraph(
        epoch=0,
        params_total=1,
        nodes=[GraphNode(node_id="input", kind=NodeKind.INPUT, op="input")],
        edges=[GraphEdge(source="input", target="ghost")],
    )
    with pytest.raises(ValueError, match="ghost"):
        featurize(observe(bad))


def test_slot_state_and_layer_health_reach_their_nodes(conv_graph):
    report = SeedStateReport(slot_id="s2", stage=SeedStage.BLENDING, alpha=0.5, epochs_in_stage=2, contribution=0.03)
    health = LayerHealth(epoch=3, layers=[LayerHealthReport(layer="s2:act2", dead_ratio=0.25, grad_norm=1.0)])
    data = featurize(observe(conv_graph, {"s2": report}, health=health))
    s2 = data.slot_index[1]
    dormant = data.slot_index[0]
    assert not torch.equal(data.x[s2], data.x[dormant])
    act2 = [n.node_id for n in conv_graph.nodes].index("act2")
    act1 = [n.node_id for n in conv_graph.nodes].index("act1")
    assert 0.25 in data.x[act2].tolist() and 0.25 not in data.x[act1].tolist()


def test_dormant_slots_may_germinate_and_nothing_else(conv_graph):
    legal = legal_actions(observe(conv_graph))
    assert all(row == [False, True, False, False, False] for row in legal.slot_ops)
    assert legal.ops == [True, True, False, False, False]


def test_advance_and_fossilize_need_the_gate_and_cull_needs_a_live_seed(conv_graph):
    reports = {
        "s1": SeedStateReport(slot_id="s1", stage=SeedStage.TRAINING, epochs_in_stage=0, improvement=0.1),
        "s2": SeedStateReport(
            slot_id="s2", stage=SeedStage.PROBATIONARY, epochs_in_stage=5, contribution=0.05, seed_grad_norm=1.0
        ),
        "s3": SeedStateReport(slot_id="s3", stage=SeedStage.FOSSILIZED),
    }
    legal = legal_actions(observe(conv_graph, reports))
    s1, s2, s3 = legal.slot_ops
    assert not s1[ADV] and s1[CULL] and not s1[GERM]  # G2 needs more isolated epochs
    assert s2[FOSS] and not s2[ADV] and s2[CULL]
    assert s3 == [False] * 5  # fossilized: nothing further
    grown = {"s1": SeedStateReport(slot_id="s1", stage=SeedStage.TRAINING, epochs_in_stage=10, improvement=0.1)}
    assert legal_actions(observe(conv_graph, grown)).slot_ops[0][ADV]


def test_embargo_live_seed_limit_and_budget_close_germination(conv_graph):
    embargoed = {"s1": SeedStateReport(slot_id="s1", stage=SeedStage.EMBARGOED, embargo_epochs_left=2)}
    assert not legal_actions(observe(conv_graph, embargoed)).slot_ops[0][GERM]
    live = {s: SeedStateReport(slot_id=s, stage=SeedStage.TRAINING) for s in ("s1", "s2")}
    assert not legal_actions(observe(conv_graph, live), max_active_seeds=2).slot_ops[2][GERM]
    cheapest = min(o.params for o in conv_graph.slots[0].options)
    tight = legal_actions(observe(conv_graph, param_budget=conv_graph.params_total + cheapest))
    assert sum(tight.options[0]) >= 1 and not all(tight.options[0])
    none = legal_actions(observe(conv_graph, param_budget=conv_graph.params_total + cheapest - 1))
    assert none.ops[GERM] is False and not any(any(row) for row in none.options)
    assert DecisionAction.GERMINATE.value == "germinate"


def test_running_norm_matches_the_statistics_of_everything_it_saw():
    torch.manual_seed(0)
    data = torch.randn(300, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 0.0])
    norm = RunningNorm(3, eps=1e-8)
    for chunk in data.split(64):
        norm.update(chunk)
    assert torch.allclose(norm.mean, data.mean(0), atol=1e-4)
    assert torch.allclose(norm.var, data.var(0, unbiased=False), rtol=1e-3)
    assert norm(data).mean(0).abs().max() < 1e-3
