"""The policy interface every Tamiyo policy implements (heuristic now, learned later).

A policy reads one epoch's :class:`TrainingSignals`, and optionally the run's
newest :class:`ModelGraph` (structure, and the blueprint options at each slot
with their exact cost) and :class:`LayerHealth`, and answers with one
:class:`AdaptationDecision` (WAIT included), which always carries a reason and
a confidence. Policies never see torch, the model or the data: a policy
decides the same in process (``esper train``) and behind the bus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from esper.leyline import AdaptationDecision, DecisionAction, LayerHealth, ModelGraph, TrainingSignals

#: (slot_id, blueprint, config) -> parameters the seed would add, or None when it does not fit the slot.
#: ``ModelGraph.price`` is one.
CostModel = Callable[[str, str, Mapping[str, Any]], int | None]


@runtime_checkable
class Policy(Protocol):
    """What Tamiyo asks once per epoch. Implementations must be deterministic given
    their state and their inputs, so that runs (and resumed runs) reproduce."""

    name: str

    def decide(
        self, signals: TrainingSignals, *, graph: ModelGraph | None = None, health: LayerHealth | None = None
    ) -> AdaptationDecision:
        """The decision for the epoch ``signals.epoch``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class SlotwisePolicy(Policy, Protocol):
    """A policy that can be asked again at the same boundary about the slots it has not acted on.

    ``exclude`` names slots it already decided on at this boundary: it must
    leave them alone (their reports in ``signals`` already show the stage the
    pending command leads to). It declares itself with ``slotwise = True``.
    """

    slotwise: bool

    def decide(
        self,
        signals: TrainingSignals,
        *,
        graph: ModelGraph | None = None,
        health: LayerHealth | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> AdaptationDecision:
        """The decision for the epoch ``signals.epoch`` about any slot but those in ``exclude``."""
        ...


def is_slotwise(policy: object) -> bool:
    """Whether ``policy`` may be asked for one decision per slot at a boundary."""
    return getattr(policy, "slotwise", False) is True


def decision_id(policy: str, epoch: int) -> str:
    """Deterministic id: one decision per policy and epoch."""
    return f"{policy}-e{epoch}"


def wait(policy: str, epoch: int, reason: str, confidence: float = 1.0) -> AdaptationDecision:
    """A WAIT decision."""
    return AdaptationDecision(
        decision_id=decision_id(policy, epoch),
        epoch=epoch,
        action=DecisionAction.WAIT,
        reason=reason,
        confidence=confidence,
        policy=policy,
    )


class StaticPolicy:
    """Never adapts: the host trains as it is (``esper train --policy none``)."""

    name = "none"

    def decide(
        self, signals: TrainingSignals, *, graph: ModelGraph | None = None, health: LayerHealth | None = None
    ) -> AdaptationDecision:
        return wait(self.name, signals.epoch, "static host: this run never adapts")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
