"""The in-run hot path: one graph, greedy, no autograd, no batching, no distributions.

:func:`decide_one` computes what ``TamiyoNetwork.evaluate([graph], greedy=True)``
does, with the same weights, in plain tensor operations (tested to agree):

* the GATv2 layers (:func:`gatv2`) take the graph's edges with their self
  loops already added: :class:`LoopedEdges` is built once per graph structure
  (the featurizer hands over the same edge tensors until the graph changes)
  and kept by the caller, instead of PyG re-deriving them in every layer of
  every call;
* the attentional readout of one graph is a softmax over its nodes;
* the slot and option heads run only when the operation needs them.

Everything runs under ``torch.inference_mode``; the caller sets the thread
count (one, in Simic's workers, the Tamiyo service and the latency benchmark).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch_geometric.nn import GATv2Conv

from esper.leyline import DecisionAction
from esper.tamiyo.gnn.observation import OP_INDEX

if TYPE_CHECKING:
    from esper.tamiyo.gnn.network import TamiyoNetwork

_NEG = -1e9
_GERMINATE = OP_INDEX[DecisionAction.GERMINATE]
_WAIT = OP_INDEX[DecisionAction.WAIT]


class LoopedEdges(NamedTuple):
    """A graph's edges as every GATv2 layer sees them: without self loops, then one loop per node whose
    feature is the mean of the node's incoming edge features (PyG's ``fill_value='mean'``)."""

    source: torch.Tensor  # (E',)
    target: torch.Tensor  # (E',)
    attr: torch.Tensor  # (E', EDGE_FEATURES)
    nodes: int
    built_from: tuple[torch.Tensor, torch.Tensor]  # the edge tensors (held, so their identity stays theirs)

    def fits(self, graph: Any) -> bool:
        """Whether these are ``graph``'s edges: built from the very same edge tensors, for as many nodes."""
        index, attr = self.built_from
        return index is graph.edge_index and attr is graph.edge_attr and self.nodes == graph.x.shape[0]


def looped_edges(edge_index: torch.Tensor, edge_attr: torch.Tensor, nodes: int) -> LoopedEdges:
    keep = edge_index[0] != edge_index[1]
    index, attr = edge_index[:, keep], edge_attr[keep]
    counts = torch.zeros(nodes).index_add_(0, index[1], torch.ones(index.shape[1]))
    loop_attr = torch.zeros(nodes, attr.shape[1]).index_add_(0, index[1], attr) / counts.clamp(min=1).unsqueeze(-1)
    loops = torch.arange(nodes)
    return LoopedEdges(
        source=torch.cat([index[0], loops]),
        target=torch.cat([index[1], loops]),
        attr=torch.cat([attr, loop_attr]),
        nodes=nodes,
        built_from=(edge_index, edge_attr),
    )


def gatv2(conv: GATv2Conv, x: torch.Tensor, edges: LoopedEdges) -> torch.Tensor:
    """``conv(x, edge_index, edge_attr)`` for a layer built with self loops, over pre-looped ``edges``."""
    heads, channels = conv.heads, conv.out_channels
    x_l = conv.lin_l(x).view(-1, heads, channels)
    x_r = x_l if conv.share_weights else conv.lin_r(x).view(-1, heads, channels)
    x_j = x_l.index_select(0, edges.source)
    e = x_j + x_r.index_select(0, edges.target)
    if conv.lin_edge is not None:
        e = e + conv.lin_edge(edges.attr).view(-1, heads, channels)
    alpha = (F.leaky_relu(e, conv.negative_slope) * conv.att).sum(-1)  # (E', heads)
    target = edges.target.unsqueeze(-1).expand_as(alpha)
    peak = torch.full((edges.nodes, heads), float("-inf")).scatter_reduce(0, target, alpha, "amax")
    alpha = (alpha - peak.index_select(0, edges.target)).exp()
    total = torch.zeros(edges.nodes, heads).index_add_(0, edges.target, alpha) + 1e-16
    alpha = alpha / total.index_select(0, edges.target)
    out = torch.zeros(edges.nodes, heads, channels).index_add_(0, edges.target, x_j * alpha.unsqueeze(-1))
    out = out.view(-1, heads * channels) if conv.concat else out.mean(dim=1)
    if conv.res is not None:
        out = out + conv.res(x)
    return out + conv.bias if conv.bias is not None else out


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    empty = ~mask.any(-1, keepdim=True)
    return logits.masked_fill(~(mask | empty), _NEG)


@torch.inference_mode()
def decide_one(net: TamiyoNetwork, graph: Any, edges: LoopedEdges | None = None) -> tuple[dict[str, Any], LoopedEdges]:
    """The greedy decision on one featurized graph (a ``TamiyoGraph`` or anything with its fields), and the
    looped edges used (pass them back while the graph's edge tensors stay the same object).

    The decision: ``action`` (op, slot, option), ``p_op``, ``p_slot``, ``p_option``, ``value``, ``value_std``.
    """
    if edges is None or not edges.fits(graph):
        edges = looped_edges(graph.edge_index, graph.edge_attr, graph.x.shape[0])
    h = net.node_in(graph.x)
    for conv, norm in zip(net.convs, net.norms, strict=True):
        h = norm(h + torch.relu(gatv2(conv, h, edges)))
    readout = net.readout
    gate = torch.softmax(readout.gate_nn(h), dim=0)
    pooled = (gate * readout.nn(h)).sum(0, keepdim=True)
    trunk = net.trunk(torch.cat([pooled, net.global_in(net.global_norm(graph.u))], dim=-1))
    values = net.value_head(trunk)[0]
    op_probs = torch.softmax(_masked(net.op_head(trunk), graph.op_mask), -1)[0]
    op = int(op_probs.argmax())
    out: dict[str, Any] = {
        "action": (op, 0, 0),
        "p_op": float(op_probs[op]),
        "p_slot": 1.0,
        "p_option": 1.0,
        "value": float(values.mean()),
        "value_std": float(values.std()) if values.numel() > 1 else 0.0,
    }
    if op == _WAIT or graph.slot_index.numel() == 0:
        return out, edges
    slots = h.index_select(0, graph.slot_index)
    n = slots.shape[0]
    chosen = net.op_embedding.weight[op].expand(n, -1)
    scores = net.slot_head(torch.cat([slots, trunk.expand(n, -1), chosen], dim=-1)).squeeze(-1)
    slot_probs = torch.softmax(_masked(scores, graph.slot_ops[:, op]), -1)
    slot = int(slot_probs.argmax())
    out["action"], out["p_slot"] = (op, slot, 0), float(slot_probs[slot])
    if op != _GERMINATE:
        return out, edges
    mine = (graph.option_slot == slot).nonzero().squeeze(-1)
    m = mine.numel()
    parts = [net.option_in(graph.option_x[mine]), slots[slot].expand(m, -1), trunk.expand(m, -1)]
    scores = net.option_head(torch.cat(parts, -1)).squeeze(-1)
    option_probs = torch.softmax(_masked(scores, graph.option_mask[mine]), -1)
    option = int(option_probs.argmax())
    out["action"], out["p_option"] = (op, slot, option), float(option_probs[option])
    return out, edges
