"""The learned Tamiyo's network: GATv2 message passing over the model graph, an
attentional readout, and factored heads (operation, slot pointer, blueprint,
value with an ensemble-disagreement uncertainty).

The action is ``(operation, slot, option)``: ``operation`` indexes
:data:`~esper.tamiyo.gnn.observation.OPERATIONS`; ``slot`` points at one of the
graph's slots (``ModelGraph.slots`` order: any number of slots); ``option``
indexes that slot's blueprint options. It is sampled autoregressively
(operation, then slot given the operation, then option given the slot), every
step masked by :func:`~esper.tamiyo.gnn.observation.legal_actions`. WAIT picks
no slot and only GERMINATE picks an option: their unused parts contribute no
log-probability and no entropy.

The class speaks Simic's PPO agent protocol (``encode``, ``get_value``,
``get_action_and_value``) so PPO and offline training update the same module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import Categorical
from torch_geometric.data import Batch
from torch_geometric.nn import GATv2Conv
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.utils import to_dense_batch

from esper.leyline import DecisionAction
from esper.tamiyo.gnn.features import (
    EDGE_FEATURES,
    GLOBAL_FEATURES,
    NODE_FEATURES,
    OPTION_FEATURES,
    RunningNorm,
    TamiyoGraph,
    featurize,
)
from esper.tamiyo.gnn.inference import decide_one
from esper.tamiyo.gnn.observation import OP_INDEX, OPERATIONS, GraphObservation

_NEG = -1e9
_GERMINATE = OP_INDEX[DecisionAction.GERMINATE]
_WAIT = OP_INDEX[DecisionAction.WAIT]


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Sizes of :class:`TamiyoNetwork` (stored with every checkpoint)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    value_heads: int = 4
    max_active_seeds: int = 3


class Heads(NamedTuple):
    """The network's outputs for a batch of B graphs with S slots and O options in all."""

    op_logits: torch.Tensor  # (B, 5), masked
    slot_embedding: torch.Tensor  # (S, H)
    slot_graph: torch.Tensor  # (S,) graph of each slot
    trunk: torch.Tensor  # (B, H)
    values: torch.Tensor  # (B, value_heads)


def _mlp(sizes: Sequence[int], out_gain: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2**0.5)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # a row with nothing legal (e.g. WAIT needs no slot) keeps finite logits; its log-prob is never used
    empty = ~mask.any(-1, keepdim=True)
    return logits.masked_fill(~(mask | empty), _NEG)


class TamiyoNetwork(nn.Module):
    """GNN policy and value over :class:`TamiyoGraph` batches (see the module docstring).

    Shapes: B graphs, N nodes, S slots, O options in a batch; H = ``config.hidden``.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or NetworkConfig()
        self.global_norm = RunningNorm(GLOBAL_FEATURES)
        self.node_in = _mlp([NODE_FEATURES, c.hidden, c.hidden])
        self.global_in = _mlp([GLOBAL_FEATURES, c.hidden, c.hidden])
        self.convs = nn.ModuleList(
            GATv2Conv(c.hidden, c.hidden, heads=c.heads, concat=False, edge_dim=EDGE_FEATURES) for _ in range(c.layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(c.layers))
        self.readout = AttentionalAggregation(gate_nn=_mlp([c.hidden, c.hidden, 1]), nn=_mlp([c.hidden, c.hidden]))
        self.trunk = _mlp([2 * c.hidden, c.hidden, c.hidden])
        self.op_head = _mlp([c.hidden, c.hidden, len(OPERATIONS)], out_gain=0.01)
        self.op_embedding = nn.Embedding(len(OPERATIONS), c.hidden)
        self.slot_head = _mlp([3 * c.hidden, c.hidden, 1], out_gain=0.01)
        self.option_in = _mlp([OPTION_FEATURES, c.hidden, c.hidden])
        self.option_head = _mlp([3 * c.hidden, c.hidden, 1], out_gain=0.01)
        self.value_head = _mlp([c.hidden, c.hidden, c.value_heads], out_gain=1.0)

    # -- observations ---------------------------------------------------------
    def encode(self, obs: Iterable[GraphObservation | TamiyoGraph], *, update_stats: bool = False) -> list[TamiyoGraph]:
        """Featurize a vector step's observations; with ``update_stats`` the global statistics take them in."""
        graphs = [
            o if isinstance(o, TamiyoGraph) else featurize(o, max_active_seeds=self.config.max_active_seeds)
            for o in obs
        ]
        if update_stats and graphs:
            self.global_norm.update(torch.cat([g.u for g in graphs]))
        return graphs

    @staticmethod
    def batch(graphs: Sequence[TamiyoGraph] | Batch) -> Batch:
        return graphs if isinstance(graphs, Batch) else Batch.from_data_list(list(graphs))

    # -- the network ----------------------------------------------------------
    def heads(self, batch: Batch) -> Heads:
        """Node embeddings -> readout -> trunk; op logits are masked, slots are not yet."""
        h = self.node_in(batch.x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(h, batch.edge_index, batch.edge_attr)))
        graph = self.readout(h, batch.batch, dim_size=batch.num_graphs)
        u = self.global_in(self.global_norm(batch.u))
        trunk = self.trunk(torch.cat([graph, u], dim=-1))
        op_logits = _masked(self.op_head(trunk), batch.op_mask)
        slot_graph = batch.batch[batch.slot_index]
        return Heads(op_logits, h[batch.slot_index], slot_graph, trunk, self.value_head(trunk))

    def _slot_logits(self, heads: Heads, batch: Batch, op: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pointer logits over each graph's slots for operation ``op`` (B,): (B, S_max) masked, and slot offsets."""
        trunk = heads.trunk[heads.slot_graph]
        chosen = self.op_embedding(op)[heads.slot_graph]
        scores = self.slot_head(torch.cat([heads.slot_embedding, trunk, chosen], dim=-1)).squeeze(-1)
        legal = batch.slot_ops[torch.arange(len(heads.slot_graph)), op[heads.slot_graph]]
        dense, present = to_dense_batch(scores, heads.slot_graph, batch_size=batch.num_graphs)
        legal_dense, _ = to_dense_batch(legal, heads.slot_graph, fill_value=False, batch_size=batch.num_graphs)
        counts = present.sum(1)
        offsets = torch.cumsum(counts, 0) - counts
        return _masked(dense, legal_dense & present), offsets

    def _option_logits(self, heads: Heads, batch: Batch, slot: torch.Tensor) -> torch.Tensor:
        """Logits over the options of each graph's chosen slot (global slot index, (B,)): (B, O_max) masked."""
        n_slots = len(heads.slot_graph)
        if batch.option_x.shape[0] == 0:
            return torch.zeros(batch.num_graphs, 1)
        option_graph = heads.slot_graph[batch.option_slot]
        parts = [self.option_in(batch.option_x), heads.slot_embedding[batch.option_slot], heads.trunk[option_graph]]
        scores = self.option_head(torch.cat(parts, dim=-1)).squeeze(-1)
        dense, present = to_dense_batch(scores, batch.option_slot, batch_size=n_slots)
        legal, _ = to_dense_batch(batch.option_mask, batch.option_slot, fill_value=False, batch_size=n_slots)
        safe = slot.clamp(0, max(n_slots - 1, 0))
        return _masked(dense[safe], (legal & present)[safe])

    def get_value(self, x: Sequence[TamiyoGraph] | Batch) -> torch.Tensor:
        """State values (B,): the mean of the value ensemble."""
        return self.heads(self.batch(x)).values.mean(-1)

    def get_action_and_value(
        self, x: Sequence[TamiyoGraph] | Batch, action: torch.Tensor | None = None, *, greedy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action (B, 3), log_prob (B,), entropy (B,), value (B,))``; samples (or, ``greedy``, takes the
        most likely choice at each step) when ``action`` is None."""
        out = self.evaluate(x, action, greedy=greedy)
        return out["action"], out["log_prob"], out["entropy"], out["value"]

    def evaluate(
        self, x: Sequence[TamiyoGraph] | Batch, action: torch.Tensor | None = None, *, greedy: bool = False
    ) -> dict[str, torch.Tensor]:
        """Everything about one batch's decisions: the action, its log-probability and the probability of
        each part, the entropy, the value and the value ensemble's spread (the uncertainty)."""
        batch = self.batch(x)
        heads = self.heads(batch)
        op_dist = Categorical(logits=heads.op_logits)
        op = (heads.op_logits.argmax(-1) if greedy else op_dist.sample()) if action is None else action[:, 0]
        log_prob, entropy = op_dist.log_prob(op), op_dist.entropy()
        slot = torch.zeros_like(op)
        option = torch.zeros_like(op)
        p_slot = torch.ones(len(op))
        p_option = torch.ones(len(op))
        if len(heads.slot_graph) > 0:
            slot_logits, offsets = self._slot_logits(heads, batch, op)
            slot_dist = Categorical(logits=slot_logits)
            if action is None:
                slot = slot_logits.argmax(-1) if greedy else slot_dist.sample()
            else:
                slot = action[:, 1]
            uses_slot = (op != _WAIT).float()
            log_prob = log_prob + uses_slot * slot_dist.log_prob(slot)
            entropy = entropy + uses_slot * slot_dist.entropy()
            p_slot = torch.where(op != _WAIT, slot_dist.log_prob(slot).exp(), p_slot)
            option_logits = self._option_logits(heads, batch, offsets + slot)
            option_dist = Categorical(logits=option_logits)
            if action is None:
                option = option_logits.argmax(-1) if greedy else option_dist.sample()
            else:
                option = action[:, 2]
            germinate = (op == _GERMINATE).float()
            log_prob = log_prob + germinate * option_dist.log_prob(option.clamp(max=option_logits.shape[1] - 1))
            entropy = entropy + germinate * option_dist.entropy()
            p_option = torch.where(op == _GERMINATE, option_dist.log_prob(option).exp(), p_option)
        chosen = torch.stack([op, slot, option], dim=-1)
        return {
            "action": chosen,
            "log_prob": log_prob,
            "entropy": entropy,
            "value": heads.values.mean(-1),
            "value_std": heads.values.std(-1) if heads.values.shape[-1] > 1 else torch.zeros(len(op)),
            "p_op": op_dist.log_prob(op).exp(),
            "p_slot": p_slot,
            "p_option": p_option,
            "op_logits": heads.op_logits,
        }

    def decide_one(self, graph: TamiyoGraph) -> dict[str, Any]:
        """The greedy action for one graph without batching or distributions (the in-run hot path,
        :func:`esper.tamiyo.gnn.inference.decide_one`).

        Same numbers as ``evaluate([graph], greedy=True)``: ``action`` (op, slot, option), ``p_op``,
        ``p_slot``, ``p_option``, ``value``, ``value_std``.
        """
        return decide_one(self, graph)[0]

    def checkpoint(self) -> dict[str, Any]:
        """Weights, normalizer statistics and sizes: what :meth:`from_checkpoint` rebuilds from."""
        return {"network_config": asdict(self.config), "network": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TamiyoNetwork:
        network = cls(NetworkConfig(**state["network_config"]))
        network.load_state_dict(state["network"])
        return network
