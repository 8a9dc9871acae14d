"""The model graph: how Tolaria describes a run's network to Tamiyo (stream ``esper.telemetry.training``).

Tamiyo never imports the model, torch or the data: everything it knows about a
network's structure comes from this message. Tolaria publishes it when a run
starts (``epoch`` 0) and after every boundary that changed the structure
(a seed built, fossilized or removed), on the training stream, so a consumer
always reads the graph an epoch's signals refer to before those signals.

* ``nodes``: the network's input, its leaf layers, its seed slots and its
  output, each with the per-sample feature shape it produces (batch dimension
  left out) and its own parameter count. A slot node (``kind`` ``slot``) sits
  right after the layer it is attached to (``module``) and carries its
  ``slot_id`` and the live seed's parameters.
* ``edges``: data flow, ``source`` -> ``target`` node ids, in forward order.
* ``slots``: for each slot, the blueprint options that fit its features with
  the exact number of parameters each would add (``params``). Tamiyo prices
  and validates germinations from these numbers only.
* ``thresholds``: the gate thresholds Kasmina runs the lifecycle with, so a
  policy that checks gates checks the same ones.

Feature ``layout`` is how a blueprint reads the features: ``linear`` (D,),
``sequence`` (T, D), ``conv1d`` (C, L), ``conv2d`` (C, H, W); None where no
blueprint serves them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from esper.leyline.commands import BlueprintConfig
from esper.leyline.gates import GateThresholds
from esper.leyline.message import Message, Record

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]

#: Feature layouts a slot can have (``GraphNode.layout``).
LAYOUTS = ("linear", "sequence", "conv1d", "conv2d")


class NodeKind(StrEnum):
    INPUT = "input"
    LAYER = "layer"
    SLOT = "slot"
    OUTPUT = "output"


class GraphNode(Record, frozen=True, kw_only=True):
    """One node: ``op`` is the layer's type (``Conv1d``, ``ReLU``, ...), ``slot`` for slots."""

    node_id: NodeId
    kind: NodeKind
    op: str
    shape: list[NonNegInt] = msgspec.field(default_factory=list)
    params: NonNegInt = 0
    layout: str | None = None
    slot_id: str | None = None
    module: str | None = None


class GraphEdge(Record, frozen=True, kw_only=True):
    source: NodeId
    target: NodeId


class BlueprintOption(Record, frozen=True, kw_only=True):
    """A blueprint with the configuration it would be built with, and the parameters it would add."""

    blueprint: str
    config: BlueprintConfig = msgspec.field(default_factory=dict)
    params: NonNegInt


class SlotOptions(Record, frozen=True, kw_only=True):
    """What can grow in one slot."""

    slot_id: str
    module: str
    shape: list[NonNegInt] = msgspec.field(default_factory=list)
    layout: str | None = None
    options: list[BlueprintOption] = msgspec.field(default_factory=list)


class ModelGraph(Message, frozen=True, kw_only=True):
    """A run's network as a graph (see the module docstring).

    ``revision`` counts structural changes since the run started (0 first), so a
    reader can tell a newer graph from a redelivered one.
    """

    message_type = "model_graph"

    epoch: NonNegInt
    revision: NonNegInt = 0
    params_total: NonNegInt
    nodes: list[GraphNode]
    edges: list[GraphEdge] = msgspec.field(default_factory=list)
    slots: list[SlotOptions] = msgspec.field(default_factory=list)
    thresholds: GateThresholds | None = None

    def slot(self, slot_id: str) -> SlotOptions | None:
        """The options of ``slot_id`` (None for an unknown slot)."""
        return next((s for s in self.slots if s.slot_id == slot_id), None)

    def price(self, slot_id: str, blueprint: str, config: BlueprintConfig | None = None) -> int | None:
        """Parameters ``blueprint`` adds at ``slot_id``; None where it is not offered there.

        An empty ``config`` matches the slot's first option of that blueprint;
        otherwise the configuration must be one the graph offers.
        """
        slot = self.slot(slot_id)
        if slot is None:
            return None
        for option in slot.options:
            if option.blueprint == blueprint and (not config or dict(option.config) == dict(config)):
                return option.params
        return None
