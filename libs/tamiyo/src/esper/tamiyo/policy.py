"""The policy interface every Tamiyo policy implements (heuristic now, learned later).

A policy reads one epoch's :class:`TrainingSignals` and answers with one
:class:`AdaptationDecision` (WAIT included), which always carries a reason and
a confidence. :func:`decision_to_command` turns an actionable decision into the
:class:`AdaptationCommand` Tolaria applies at the epoch boundary.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    TrainingSignals,
)

_COMMAND_FOR: dict[DecisionAction, CommandAction] = {
    DecisionAction.GERMINATE: CommandAction.GERMINATE,
    DecisionAction.ADVANCE: CommandAction.ADVANCE,
    DecisionAction.CULL: CommandAction.CULL,
    DecisionAction.FOSSILIZE: CommandAction.FOSSILIZE,
}


@runtime_checkable
class Policy(Protocol):
    """What Tamiyo asks once per epoch. Implementations must be deterministic given
    their state and the signals, so that runs (and resumed runs) reproduce."""

    name: str

    def decide(self, signals: TrainingSignals) -> AdaptationDecision:
        """The decision for the epoch ``signals.epoch``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


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

    def decide(self, signals: TrainingSignals) -> AdaptationDecision:
        return wait(self.name, signals.epoch, "static host: this run never adapts")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def decision_to_command(
    decision: AdaptationDecision, signals: TrainingSignals | None = None
) -> AdaptationCommand | None:
    """The command carrying out ``decision``; None for WAIT or a decision the safety check rejected.

    With the ``signals`` the decision was made on, the command carries the
    slot's stage in them, so Tolaria can refuse it if it arrives too late.
    """
    if decision.action is DecisionAction.WAIT or not decision.accepted:
        return None
    stage = next((r.stage for r in signals.seeds if r.slot_id == decision.slot_id), None) if signals else None
    return AdaptationCommand(
        command_id=decision.command_id or f"cmd-{decision.decision_id}",
        action=_COMMAND_FOR[decision.action],
        slot_id=decision.slot_id,
        blueprint=decision.blueprint,
        blueprint_config=dict(decision.blueprint_config),
        epoch=decision.epoch,
        reason=decision.reason,
        issued_by=decision.policy,
        expected_stage=stage,
    )
