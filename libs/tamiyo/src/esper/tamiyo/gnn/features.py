"""From Leyline messages to a torch_geometric graph: :func:`featurize`.

Nodes are the graph's nodes (input, layers, slots, output), edges follow the
data flow and are added reversed too (edge feature says which), so slot nodes
hear both what feeds them and what reads them.

Node features (``NODE_FEATURES`` columns, hand-scaled to O(1)):

* node kind one-hot (input, layer, slot, output) and layer type one-hot over
  :data:`OP_TYPES` (+ other);
* ``log1p(params) / 10`` and ``log1p(features per sample) / 10``;
* layer health from :class:`LayerHealth` (matched by layer, module or slot id):
  activation mean, ``log1p`` activation variance, dead ratio, ``log1p`` gradient
  norm, and a present flag;
* slot state from the newest :class:`SeedStateReport`: stage one-hot, alpha,
  epochs in stage / 10, last contribution and improvement (x10, clipped to
  +-5), ``log1p`` seed parameters / 10, embargo epochs left / 5.

Global features are Leyline's observation schema (:class:`GlobalFeatures` and
the loss and accuracy histories, :func:`write_observation`), normalized by the
network's running statistics (:class:`RunningNorm`).

Blueprint options become option rows (``OPTION_FEATURES`` columns): the
blueprint name hashed into :data:`NAME_BUCKETS` buckets, ``log1p(params) / 10``,
params over the current model size, and params over the room left in the budget.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch_geometric.data import Data

from esper.leyline import ACTIVE_STAGES, ModelGraph, NodeKind, SeedStage
from esper.leyline.observation import HISTORY_LENGTH, OBSERVATION_SIZE, GlobalFeatures, write_observation
from esper.tamiyo.gnn.observation import OPERATIONS, GraphObservation, legal_actions, seed_reports

OP_TYPES = (
    "Conv1d",
    "Conv2d",
    "Linear",
    "ReLU",
    "GELU",
    "Tanh",
    "Sigmoid",
    "Flatten",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "LayerNorm",
    "Dropout",
)
_KINDS = (NodeKind.INPUT, NodeKind.LAYER, NodeKind.SLOT, NodeKind.OUTPUT)
_N_STAGES = len(SeedStage)
NAME_BUCKETS = 8

NODE_FEATURES = len(_KINDS) + len(OP_TYPES) + 1 + 2 + 5 + _N_STAGES + 6
EDGE_FEATURES = 3
GLOBAL_FEATURES = len(GlobalFeatures._fields) + 2 * HISTORY_LENGTH
OPTION_FEATURES = NAME_BUCKETS + 3


class TamiyoGraph(Data):  # type: ignore[misc]
    """A featurized observation; batches with ``Batch.from_data_list``.

    ``x`` (N, NODE_FEATURES), ``edge_index`` (2, E), ``edge_attr`` (E, EDGE_FEATURES),
    ``u`` (1, GLOBAL_FEATURES), ``slot_index`` (S,) node index of each slot in
    ``ModelGraph.slots`` order, ``slot_ops`` (S, 5) bool, ``op_mask`` (1, 5)
    bool, ``option_x`` (O, OPTION_FEATURES), ``option_slot`` (O,) slot number
    of each option (slot order, options in graph order), ``option_mask`` (O,) bool.
    """

    def __inc__(self, key: str, value: object, *args: object, **kwargs: object) -> int:
        if key == "option_slot":
            return int(self.slot_index.numel())
        return int(super().__inc__(key, value, *args, **kwargs))


def _clip(value: float | None, scale: float = 1.0, bound: float = 5.0) -> float:
    if value is None or not math.isfinite(value):
        return 0.0
    return max(-bound, min(bound, value * scale))


def _log(value: float | None) -> float:
    if value is None or not math.isfinite(value) or value < 0:
        return 0.0
    return math.log1p(value) / 10.0


def name_bucket(name: str) -> int:
    """A stable bucket for a blueprint name (crc32, not Python's salted hash)."""
    return zlib.crc32(name.encode()) % NAME_BUCKETS


def observation_parts(obs: GraphObservation) -> tuple[GlobalFeatures, list[float], list[float]]:
    """Leyline's global observation features for ``obs`` and its (clipped) loss and accuracy histories."""
    s = obs.signals
    values = [s.train_loss, s.val_loss, s.train_accuracy, s.val_accuracy, s.loss_delta, s.accuracy_delta]
    sanitized = not all(math.isfinite(v) for v in values)
    params_total = s.params_total or obs.graph.params_total
    features = GlobalFeatures(
        epoch_progress=s.epoch / max(obs.epochs_total, 1),
        train_loss=_clip(s.train_loss, bound=20.0),
        val_loss=_clip(s.val_loss, bound=20.0),
        train_accuracy=_clip(s.train_accuracy),
        val_accuracy=_clip(s.val_accuracy),
        loss_delta=_clip(s.loss_delta),
        accuracy_delta=_clip(s.accuracy_delta),
        plateau_epochs=float(s.plateau_epochs),
        best_val_accuracy=_clip(s.best_val_accuracy),
        params_ratio=params_total / max(obs.params_initial, 1),
        active_seeds=float(sum(1 for r in s.seeds if r.stage in ACTIVE_STAGES)),
        signals_sanitized=float(sanitized),
    )
    losses = [_clip(v, bound=20.0) for v in obs.loss_history]
    accuracies = [_clip(v) for v in obs.accuracy_history]
    return features, losses, accuracies


def global_features(obs: GraphObservation) -> list[float]:
    """Leyline's global observation features and histories for ``obs`` (GLOBAL_FEATURES values, raw)."""
    buffer = [0.0] * OBSERVATION_SIZE
    write_observation(buffer, *observation_parts(obs), [])
    return buffer[:GLOBAL_FEATURES]


def _node_row(kind: NodeKind, op: str, params: int, shape: list[int]) -> list[float]:
    row = [0.0] * NODE_FEATURES
    row[_KINDS.index(kind)] = 1.0
    at = len(_KINDS)
    row[at + (OP_TYPES.index(op) if op in OP_TYPES else len(OP_TYPES))] = 1.0 if kind is NodeKind.LAYER else 0.0
    at += len(OP_TYPES) + 1
    row[at] = _log(params)
    row[at + 1] = _log(math.prod(shape) if shape else 0)
    return row


_HEALTH_AT = len(_KINDS) + len(OP_TYPES) + 1 + 2
_STAGE_AT = _HEALTH_AT + 5
_SLOT_AT = _STAGE_AT + _N_STAGES


class _Static(NamedTuple):
    """What depends only on the graph (and the model's size and budget): built once per graph."""

    graph: ModelGraph
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    slot_index: torch.Tensor
    slot_rows: list[int]
    option_x: torch.Tensor
    option_slot: torch.Tensor
    health_rows: dict[str, int]


_STATIC_CACHE: OrderedDict[tuple[int, int, int | None], _Static] = OrderedDict()
_STATIC_CACHE_SIZE = 32


def _static(graph: ModelGraph, params_total: int, budget: int | None) -> _Static:
    # A run decides on the same graph object every epoch until its structure changes: cache by identity
    # (the entry holds the graph, so its id cannot be reused while cached).
    key = (id(graph), params_total, budget)
    hit = _STATIC_CACHE.get(key)
    if hit is not None and hit.graph is graph:
        _STATIC_CACHE.move_to_end(key)
        return hit
    index = {node.node_id: i for i, node in enumerate(graph.nodes)}
    rows = [_node_row(node.kind, node.op, node.params, node.shape) for node in graph.nodes]
    # Tolaria names a report "<slot>:<layer>" (the slot's host layer); plain layer names and node ids work too
    health_rows = {node.node_id: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.slot_id and node.module in index:
            health_rows[f"{node.slot_id}:{node.module}"] = index[node.module]
    slot_index = []
    for slot in graph.slots:
        node = next((n for n in graph.nodes if n.kind is NodeKind.SLOT and n.slot_id == slot.slot_id), None)
        if node is None:
            raise ValueError(f"field 'slots': slot {slot.slot_id!r} has no slot node in the graph")
        slot_index.append(index[node.node_id])
    sources, targets, attrs = [], [], []
    for edge in graph.edges:
        if edge.source not in index or edge.target not in index:
            raise ValueError(f"field 'edges': edge {edge.source!r} -> {edge.target!r} names an unknown node")
        a, b = index[edge.source], index[edge.target]
        touches_slot = float(graph.nodes[a].kind is NodeKind.SLOT or graph.nodes[b].kind is NodeKind.SLOT)
        sources += [a, b]
        targets += [b, a]
        attrs += [[1.0, 0.0, touches_slot], [0.0, 1.0, touches_slot]]
    room = None if budget is None else max(budget - params_total, 1)
    option_rows, option_slot = [], []
    for s, slot in enumerate(graph.slots):
        for option in slot.options:
            row = [0.0] * OPTION_FEATURES
            row[name_bucket(option.blueprint)] = 1.0
            row[NAME_BUCKETS] = _log(option.params)
            row[NAME_BUCKETS + 1] = _clip(option.params / max(params_total, 1))
            row[NAME_BUCKETS + 2] = _clip(option.params / room) if room is not None else 0.0
            option_rows.append(row)
            option_slot.append(s)
    static = _Static(
        graph=graph,
        x=torch.tensor(rows, dtype=torch.float32).reshape(-1, NODE_FEATURES),
        edge_index=torch.tensor([sources, targets], dtype=torch.long).reshape(2, -1),
        edge_attr=torch.tensor(attrs, dtype=torch.float32).reshape(-1, EDGE_FEATURES),
        slot_index=torch.tensor(slot_index, dtype=torch.long),
        slot_rows=slot_index,
        option_x=torch.tensor(option_rows, dtype=torch.float32).reshape(-1, OPTION_FEATURES),
        option_slot=torch.tensor(option_slot, dtype=torch.long),
        health_rows=health_rows,
    )
    _STATIC_CACHE[key] = static
    while len(_STATIC_CACHE) > _STATIC_CACHE_SIZE:
        _STATIC_CACHE.popitem(last=False)
    return static


def featurize(obs: GraphObservation, *, max_active_seeds: int = 3) -> TamiyoGraph:
    """``obs`` as a :class:`TamiyoGraph` with its action masks (global features not yet normalized)."""
    graph = obs.graph
    params_total = obs.signals.params_total or graph.params_total
    static = _static(graph, params_total, obs.param_budget)
    x = static.x.clone()
    # the per-epoch parts, gathered in Python and written with one indexed assignment each
    health: dict[int, list[float]] = {}
    for report in obs.health.layers if obs.health is not None else ():
        row = static.health_rows.get(report.layer)
        if row is not None:
            health[row] = [
                _clip(report.activation_mean),
                _log(report.activation_variance) * 10.0,
                _clip(report.dead_ratio),
                _log(report.grad_norm) * 10.0,
                1.0,
            ]
    if health:
        x[list(health), _HEALTH_AT : _HEALTH_AT + 5] = torch.tensor(list(health.values()))
    stage_columns, slot_rows, slot_values = [], [], []
    for i, report in zip(static.slot_rows, seed_reports(obs), strict=True):
        stage = SeedStage(report.stage) if report is not None else SeedStage.DORMANT
        stage_columns.append(_STAGE_AT + int(stage))
        if report is not None:
            slot_rows.append(i)
            slot_values.append(
                [
                    _clip(report.alpha),
                    report.epochs_in_stage / 10.0,
                    _clip(report.contribution, 10.0),
                    _clip(report.improvement, 10.0),
                    _log(report.params),
                    report.embargo_epochs_left / 5.0,
                ]
            )
    if stage_columns:
        x[static.slot_index, stage_columns] = 1.0
    if slot_rows:
        x[slot_rows, _SLOT_AT : _SLOT_AT + 6] = torch.tensor(slot_values)
    legal = legal_actions(obs, max_active_seeds=max_active_seeds)
    n_ops = len(OPERATIONS)
    return TamiyoGraph(
        x=x,
        edge_index=static.edge_index,
        edge_attr=static.edge_attr,
        u=torch.tensor([global_features(obs)], dtype=torch.float32),
        slot_index=static.slot_index,
        slot_ops=torch.tensor(legal.slot_ops, dtype=torch.bool).reshape(-1, n_ops),
        op_mask=torch.tensor([legal.ops], dtype=torch.bool),
        option_x=static.option_x,
        option_slot=static.option_slot,
        option_mask=torch.tensor([ok for fits in legal.options for ok in fits], dtype=torch.bool),
        num_nodes=x.shape[0],
    )


class RunningNorm(torch.nn.Module):
    """Running mean and variance of a feature vector (Welford over batches), kept as buffers.

    ``forward`` returns ``clip((x - mean) / sqrt(var + eps), -5, 5)``. The
    statistics move only through :meth:`update` (during rollouts and offline
    training), so evaluation and a loaded policy see fixed statistics, and the
    buffers travel in the network's ``state_dict``.
    """

    def __init__(self, size: int, eps: float = 1e-4, clip: float = 5.0) -> None:
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.tensor(eps))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``(B, size)`` into the statistics."""
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


def exclude_slots(graph: TamiyoGraph, obs: GraphObservation, exclude: frozenset[str]) -> TamiyoGraph:
    """``graph`` (featurized from ``obs``) with no operation at the slots in ``exclude``: the question a
    slotwise policy is asked again at a boundary (:func:`esper.tamiyo.decide.decide_boundary`). An operation
    stays legal while some other slot allows it; WAIT always does. Changes ``graph`` in place and returns it."""
    if not exclude:
        return graph
    rows = [i for i, slot in enumerate(obs.graph.slots) if slot.slot_id in exclude]
    slot_ops = graph.slot_ops.clone()
    slot_ops[rows] = False
    graph.slot_ops = slot_ops
    graph.op_mask = torch.cat([torch.ones(1, 1, dtype=torch.bool), slot_ops[:, 1:].any(0, keepdim=True)], 1)
    return graph
