"""Kasmina describes a wrapped host as Leyline's ModelGraph: layers, slots, data flow, priced options."""

from __future__ import annotations

import torch
from torch import nn

from esper.kasmina import ConvHost1D, MLPHost, get_blueprint, wrap
from esper.kasmina.graph import describe
from esper.leyline import ModelGraph, NodeKind, decode, encode_message


def _conv_graph() -> tuple[object, ModelGraph]:
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS)
    x = torch.randn(2, 40)
    model.probe(x)
    return model, describe(model, x)


def test_nodes_follow_the_forward_order_with_each_slot_after_its_layer() -> None:
    _, graph = _conv_graph()
    ids = [n.node_id for n in graph.nodes]
    assert ids == [
        "input", "conv1", "act1", "slot:s1", "conv2", "act2", "slot:s2",
        "conv3", "act3", "slot:s3", "flatten", "linear", "output",
    ]  # fmt: skip
    by_id = {n.node_id: n for n in graph.nodes}
    assert by_id["conv1"].op == "Conv1d" and by_id["conv1"].shape == [8, 19] and by_id["conv1"].params == 48
    assert by_id["slot:s2"].kind is NodeKind.SLOT and by_id["slot:s2"].layout == "conv1d"
    assert by_id["slot:s2"].module == "act2" and by_id["slot:s2"].shape == [8, 10]


def test_edges_are_the_data_flow_and_a_slot_feeds_what_its_layer_fed() -> None:
    _, graph = _conv_graph()
    edges = [(e.source, e.target) for e in graph.edges]
    assert ("act1", "slot:s1") in edges and ("slot:s1", "conv2") in edges
    assert ("act1", "conv2") not in edges
    assert edges[0] == ("input", "conv1") and edges[-1] == ("linear", "output")


def test_every_option_is_priced_exactly_as_the_blueprint_would_build_it() -> None:
    model, graph = _conv_graph()
    slot = graph.slot("s1")
    assert slot is not None and slot.options
    for option in slot.options:
        built = get_blueprint(option.blueprint).build((8, 19), option.config, layer_kind="conv1d")
        assert sum(p.numel() for p in built.parameters()) == option.params
    assert graph.price("s1", "conv_heavy") == next(o.params for o in slot.options if o.blueprint == "conv_heavy")
    assert graph.price("s1", "mlp") is None  # a dense blueprint does not serve (C, L) features
    assert graph.params_total == model.param_count() == 858


def test_vector_slots_are_offered_dense_blueprints_only() -> None:
    host = MLPHost(10, 16, 3)
    model = wrap(host, host.default_slots)
    x = torch.randn(2, 10)
    model.probe(x)
    graph = describe(model, x)
    assert {o.blueprint for s in graph.slots for o in s.options} == {"mlp", "lowrank", "norm"}
    assert all(s.layout == "linear" for s in graph.slots)


def test_a_germinated_seed_shows_as_the_slot_node_parameters() -> None:
    model, _ = _conv_graph()
    model.germinate("s1", "conv_light", {"kernel_size": 3}, epoch=1, reason="test")
    graph = describe(model, torch.randn(2, 40), epoch=1, revision=1)
    node = next(n for n in graph.nodes if n.node_id == "slot:s1")
    assert node.params == 200 and graph.params_total == 858 + 200 and graph.revision == 1


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 0
        return self.head(self.act(self.fc(x)))


def test_an_untraceable_host_gets_its_execution_order_as_edges() -> None:
    model = wrap(_Untraceable(), {"s1": "act"})
    x = torch.randn(2, 4)
    model.probe(x)
    graph = describe(model, x)
    edges = [(e.source, e.target) for e in graph.edges]
    assert edges == [("input", "fc"), ("fc", "act"), ("act", "slot:s1"), ("slot:s1", "head"), ("head", "output")]


def test_the_graph_survives_the_wire() -> None:
    _, graph = _conv_graph()
    assert decode(encode_message(graph, run_id="r")).payload == graph
