"""What the learned policy sees on one epoch, and which of its actions are legal there.

:class:`GraphObservation` bundles the newest Leyline messages of a run (the
:class:`ModelGraph`, :class:`TrainingSignals`, :class:`LayerHealth`) with the
run context the global features need (recent loss and accuracy histories, the
host's initial size, the planned epochs, the parameter budget). It is plain
data: it pickles across Simic's worker processes and needs no torch.

:func:`legal_actions` is the mask: which operations are legal at which slot,
from Leyline's transition table and gates, the embargo, the live-seed limit and
each slot's priced blueprint options against the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from esper.leyline import (
    ACTIVE_STAGES,
    DecisionAction,
    GateThresholds,
    LayerHealth,
    ModelGraph,
    SeedStage,
    SeedStateReport,
    TrainingSignals,
)
from esper.leyline.gates import Gate, GateInputs, evaluate
from esper.leyline.stages import TRANSITIONS, is_cullable, next_stage

#: The operation head's actions, in index order.
OPERATIONS: tuple[DecisionAction, ...] = (
    DecisionAction.WAIT,
    DecisionAction.GERMINATE,
    DecisionAction.ADVANCE,
    DecisionAction.CULL,
    DecisionAction.FOSSILIZE,
)
OP_INDEX = {op: i for i, op in enumerate(OPERATIONS)}
#: Operations that act on a slot (all but WAIT); only GERMINATE picks a blueprint.
SLOT_OPERATIONS = frozenset(OPERATIONS[1:])

_NEXT_GATE = {
    SeedStage.GERMINATED: Gate.G1_TRAIN,
    SeedStage.TRAINING: Gate.G2_BLEND,
    SeedStage.BLENDING: Gate.G3_SHADOW,
    SeedStage.SHADOWING: Gate.G4_PROBATION,
    SeedStage.PROBATIONARY: Gate.G5_FOSSILIZE,
}


class GraphObservation(NamedTuple):
    """One decision's inputs. Histories hold the run's validation losses and accuracies, oldest first."""

    graph: ModelGraph
    signals: TrainingSignals
    health: LayerHealth | None
    loss_history: tuple[float, ...]
    accuracy_history: tuple[float, ...]
    params_initial: int
    epochs_total: int
    param_budget: int | None = None


@dataclass(frozen=True, slots=True)
class LegalActions:
    """Masks for one observation, in the graph's slot order (``ModelGraph.slots``).

    ``slot_ops[s][k]``: operation ``OPERATIONS[k]`` is legal at slot ``s``
    (column 0, WAIT, is always False: WAIT picks no slot). ``options[s][o]``:
    option ``o`` of slot ``s`` fits the budget. ``ops[k]``: some slot allows
    operation ``k`` (WAIT always).
    """

    slot_ops: list[list[bool]]
    options: list[list[bool]]

    @property
    def ops(self) -> list[bool]:
        return [True] + [any(row[k] for row in self.slot_ops) for k in range(1, len(OPERATIONS))]


def seed_reports(obs: GraphObservation) -> list[SeedStateReport | None]:
    """Each graph slot's newest state report (None where the signals carry none)."""
    by_slot = {r.slot_id: r for r in obs.signals.seeds}
    return [by_slot.get(slot.slot_id) for slot in obs.graph.slots]


def _gate_passes(report: SeedStateReport, thresholds: GateThresholds) -> bool:
    stage = SeedStage(report.stage)
    gate = _NEXT_GATE.get(stage)
    if gate is None:
        return False
    inputs = GateInputs(
        stage=stage,
        epochs_in_stage=report.epochs_in_stage,
        seed_built=True,
        improvement=report.improvement,
        alpha=report.alpha,
        contribution=report.contribution,
        seed_grad_norm=report.seed_grad_norm,
    )
    return evaluate(gate, inputs, thresholds).passed


def legal_actions(obs: GraphObservation, *, max_active_seeds: int = 3) -> LegalActions:
    """The masks for ``obs`` (see :class:`LegalActions`).

    ADVANCE and FOSSILIZE also need the stage's gate to pass with the graph's
    thresholds (Kasmina would refuse the step otherwise); GERMINATE needs a
    DORMANT slot out of embargo, fewer than ``max_active_seeds`` live seeds and
    an option that fits the remaining budget.
    """
    reports = seed_reports(obs)
    thresholds = obs.graph.thresholds or GateThresholds()
    live = sum(1 for r in reports if r is not None and r.stage in ACTIVE_STAGES)
    params_total = obs.signals.params_total or obs.graph.params_total
    room = None if obs.param_budget is None else obs.param_budget - params_total
    slot_ops: list[list[bool]] = []
    options: list[list[bool]] = []
    for slot, report in zip(obs.graph.slots, reports, strict=True):
        stage = SeedStage(report.stage) if report is not None else SeedStage.DORMANT
        fits = [room is None or option.params <= room for option in slot.options]
        row = [False] * len(OPERATIONS)
        embargoed = report is not None and report.embargo_epochs_left > 0
        row[OP_INDEX[DecisionAction.GERMINATE]] = (
            SeedStage.GERMINATED in TRANSITIONS[stage] and not embargoed and live < max_active_seeds and any(fits)
        )
        if report is not None and stage in ACTIVE_STAGES:
            forward = next_stage(stage)
            gate = _gate_passes(report, thresholds)
            row[OP_INDEX[DecisionAction.ADVANCE]] = forward is not None and forward is not SeedStage.FOSSILIZED and gate
            row[OP_INDEX[DecisionAction.FOSSILIZE]] = SeedStage.FOSSILIZED in TRANSITIONS[stage] and gate
            row[OP_INDEX[DecisionAction.CULL]] = is_cullable(stage)
        slot_ops.append(row)
        options.append(fits)
    return LegalActions(slot_ops=slot_ops, options=options)
