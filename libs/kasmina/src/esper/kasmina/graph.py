"""Describing a MorphogeneticModel as a Leyline ``ModelGraph``: layers, slots, data flow, what fits each slot.

Shapes come from one no-grad forward pass on an example batch with a hook on
every leaf module (eval mode, restored afterwards, so batch-norm statistics do
not move). Edges come from ``torch.fx``: a leaf module's inputs are traced back
through functions and methods (``flatten``, ``reshape``, additions, ...) to the
modules or the model input that produced them. A host fx cannot trace gets
the chain of leaf modules in the order they ran. Each slot becomes a node
right after the module it is attached to, and lists the catalogue options
that fit its features with their exact parameter cost.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import fx, nn

from esper.kasmina.blueprints.catalogue import CATALOGUE, Option, priced_options
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import BlueprintOption, GraphEdge, GraphNode, ModelGraph, NodeKind, SlotOptions

INPUT, OUTPUT = "input", "output"


def slot_node_id(slot_id: str) -> str:
    """The node id of a slot (slot ids and module names may coincide)."""
    return f"slot:{slot_id}"


def describe(
    model: MorphogeneticModel,
    example: torch.Tensor,
    *,
    epoch: int = 0,
    revision: int = 0,
    catalogue: tuple[Option, ...] = CATALOGUE,
) -> ModelGraph:
    """``model`` as a :class:`ModelGraph`; ``example`` is a batch of at least one input, (N, *input_shape)."""
    shapes, order = _leaf_outputs(model.host, example)
    modules = dict(model.host.named_modules())
    nodes = [GraphNode(node_id=INPUT, kind=NodeKind.INPUT, op=INPUT, shape=list(example.shape[1:]))]
    edges = _fx_edges(model.host, set(order)) or _chain(order)
    at_module = {slot.module_name: slot for slot in model.slots.values()}
    slots = []
    for name in order:
        own = sum(p.numel() for p in modules[name].parameters(recurse=False))
        nodes.append(
            GraphNode(
                node_id=name, kind=NodeKind.LAYER, op=type(modules[name]).__name__, shape=shapes[name], params=own
            )
        )
        slot = at_module.get(name)
        if slot is None:
            continue
        node_id = slot_node_id(slot.slot_id)
        shape = list(slot.feature_shape or shapes[name])
        nodes.append(
            GraphNode(
                node_id=node_id,
                kind=NodeKind.SLOT,
                op="slot",
                shape=shape,
                params=slot.seed_param_count(),
                layout=slot.layer_kind,
                slot_id=slot.slot_id,
                module=name,
            )
        )
        # the slot acts on the module's output: everything that read the module now reads the slot
        edges = [GraphEdge(source=node_id, target=e.target) if e.source == name else e for e in edges]
        edges.append(GraphEdge(source=name, target=node_id))
        options = priced_options(tuple(shape), slot.layer_kind, catalogue) if shape else []
        slots.append(
            SlotOptions(
                slot_id=slot.slot_id,
                module=name,
                shape=shape,
                layout=slot.layer_kind,
                options=[BlueprintOption(blueprint=o.blueprint, config=dict(o.config), params=n) for o, n in options],
            )
        )
    nodes.append(GraphNode(node_id=OUTPUT, kind=NodeKind.OUTPUT, op=OUTPUT, shape=_output_shape(shapes, order)))
    position = {node.node_id: i for i, node in enumerate(nodes)}
    edges.sort(key=lambda e: (position[e.target], position[e.source]))
    return ModelGraph(
        epoch=epoch,
        revision=revision,
        params_total=model.param_count(),
        nodes=nodes,
        edges=edges,
        slots=slots,
        thresholds=model.config.thresholds,
    )


@torch.no_grad()
def _leaf_outputs(host: nn.Module, example: torch.Tensor) -> tuple[dict[str, list[int]], list[str]]:
    """Per-sample output shape of every leaf module that ran, and the order they first ran in."""
    shapes: dict[str, list[int]] = {}
    order: list[str] = []
    handles = []
    modes = {module: module.training for module in host.modules()}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if name not in shapes:
                order.append(name)
                shapes[name] = list(output.shape[1:]) if isinstance(output, torch.Tensor) else []

        return hook

    try:
        for name, module in host.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(record(name)))
        host.eval()
        host(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return shapes, order


def _fx_edges(host: nn.Module, leaves: set[str]) -> list[GraphEdge] | None:
    """Data-flow edges between leaf modules (and the input/output) from a ``torch.fx`` trace; None if untraceable."""
    try:
        graph = fx.symbolic_trace(host).graph
    except Exception:  # dynamic control flow, unsupported ops: fall back to execution order
        return None
    sources: dict[fx.Node, set[str]] = {}
    edges: list[GraphEdge] = []
    seen: set[tuple[str, str]] = set()

    def upstream(node: fx.Node) -> set[str]:
        found: set[str] = set()
        for arg in node.all_input_nodes:
            found |= sources.get(arg, set())
        return found

    for node in graph.nodes:
        if node.op == "placeholder":
            sources[node] = {INPUT}
        elif node.op == "call_module" and node.target in leaves:
            for source in sorted(upstream(node)):
                if (source, str(node.target)) not in seen:
                    seen.add((source, str(node.target)))
                    edges.append(GraphEdge(source=source, target=str(node.target)))
            sources[node] = {str(node.target)}
        elif node.op == "output":
            edges.extend(GraphEdge(source=s, target=OUTPUT) for s in sorted(upstream(node)))
        else:
            sources[node] = upstream(node)
    return edges if edges else None


def _chain(order: list[str]) -> list[GraphEdge]:
    path = [INPUT, *order, OUTPUT]
    return [GraphEdge(source=a, target=b) for a, b in itertools.pairwise(path)]


def _output_shape(shapes: dict[str, list[int]], order: list[str]) -> list[int]:
    return shapes[order[-1]] if order else []
