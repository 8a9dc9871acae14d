"""Hand-built Leyline messages for a run of ConvHost1D(channels=8): what Tolaria would publish, without torch.

Used by ``torch_free_service.py`` (in a process where torch cannot be imported)
and by ``test_packages.py`` (published to a real Tamiyo service over Redis).
"""

from __future__ import annotations

from esper.leyline import (
    BlueprintOption,
    GraphEdge,
    GraphNode,
    ModelGraph,
    NodeKind,
    SeedStage,
    SeedStateReport,
    SlotOptions,
    TrainingSignals,
)

SLOTS = ("s1", "s2", "s3")
LENGTHS = (19, 10, 5)
#: what the heuristic should do on epoch 1 of this run: its first candidate, in the first slot
FIRST_DECISION = {"action": "germinate", "slot": "s1", "blueprint": "conv_heavy"}


def graph() -> ModelGraph:
    """The host as Kasmina describes it (three conv/ReLU stages, a slot after each), two options per slot."""
    nodes = [GraphNode(node_id="input", kind=NodeKind.INPUT, op="input", shape=[40])]
    edges, previous = [], "input"
    for i, (slot, length, params) in enumerate(zip(SLOTS, LENGTHS, (48, 200, 200), strict=True), start=1):
        for node in (
            GraphNode(node_id=f"conv{i}", kind=NodeKind.LAYER, op="Conv1d", shape=[8, length], params=params),
            GraphNode(node_id=f"act{i}", kind=NodeKind.LAYER, op="ReLU", shape=[8, length]),
            GraphNode(
                node_id=f"slot:{slot}", kind=NodeKind.SLOT, op="slot", shape=[8, length], layout="conv1d",
                slot_id=slot, module=f"act{i}",
            ),
        ):  # fmt: skip
            nodes.append(node)
            edges.append(GraphEdge(source=previous, target=node.node_id))
            previous = node.node_id
    nodes.append(GraphNode(node_id="output", kind=NodeKind.OUTPUT, op="output", shape=[10]))
    edges.append(GraphEdge(source=previous, target="output"))
    options = [
        BlueprintOption(blueprint="conv_heavy", config={"hidden": 16}, params=424),
        BlueprintOption(blueprint="conv_light", config={}, params=208),
    ]
    slots = [
        SlotOptions(slot_id=s, module=f"act{i}", shape=[8, n], layout="conv1d", options=options)
        for i, (s, n) in enumerate(zip(SLOTS, LENGTHS, strict=True), start=1)
    ]
    return ModelGraph(epoch=0, params_total=858, nodes=nodes, edges=edges, slots=slots)


def signals(epoch: int) -> TrainingSignals:
    """An epoch with every slot dormant."""
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.2,
        val_loss=1.3,
        train_accuracy=0.55,
        val_accuracy=0.5,
        best_val_loss=1.3,
        best_val_accuracy=0.5,
        params_total=858,
        seeds=[SeedStateReport(slot_id=s, stage=SeedStage.DORMANT) for s in SLOTS],
    )
