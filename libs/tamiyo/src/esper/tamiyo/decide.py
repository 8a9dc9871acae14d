"""The one decide step: policy -> safety monitor -> command.

``esper train`` (Tolaria's trainer, in process) and the Tamiyo service (over
the bus) both call :func:`decide` with the same policy, the same
:class:`SafetyMonitor` configuration and the same view of the run, so a run
makes the same decisions on both paths.

A decision the monitor rejects is kept (``accepted=False`` with the reason) and
yields no command. An accepted, actionable decision gets its command's
idempotency key from :func:`command_id`: deterministic, so an epoch decided
again after a crash produces the same key and Tolaria answers DUPLICATE rather
than applying it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    LayerHealth,
    ModelGraph,
    TrainingSignals,
)
from esper.tamiyo.policy import Policy
from esper.tamiyo.safety import RunSnapshot, SafetyMonitor, Verdict


@dataclass(frozen=True, slots=True)
class Decided:
    """One epoch's outcome: the decision as published, the verdict, and the command to carry it out (if any)."""

    decision: AdaptationDecision
    verdict: Verdict
    command: AdaptationCommand | None


def command_id(run_id: str, decision: AdaptationDecision) -> str:
    """The idempotency key of a policy decision's command: ``<run>:e<epoch>:<action>:<slot>``."""
    return f"{run_id}:e{decision.epoch}:{decision.action.value}:{decision.slot_id}"


def run_snapshot(
    run_id: str,
    signals: TrainingSignals,
    *,
    graph: ModelGraph | None,
    telemetry_at: float,
    param_budget: int | None = None,
    paused: bool = False,
) -> RunSnapshot:
    """The view of a run the safety monitor validates against: the slots of ``signals``, priced by ``graph``."""
    return RunSnapshot(
        run_id=run_id,
        seeds={r.slot_id: r for r in signals.seeds},
        params_total=signals.params_total,
        telemetry_epoch=signals.epoch,
        telemetry_at=telemetry_at,
        paused=paused,
        param_budget=param_budget,
        cost_model=graph.price if graph is not None else None,
    )


def decide(
    policy: Policy,
    signals: TrainingSignals,
    run: RunSnapshot,
    safety: SafetyMonitor,
    *,
    graph: ModelGraph | None = None,
    health: LayerHealth | None = None,
    now: float | None = None,
) -> Decided:
    """Ask ``policy`` about ``signals``, validate the answer against ``run``, and build its command."""
    decision = policy.decide(signals, graph=graph, health=health)
    verdict = safety.validate(decision, run, now=time.time() if now is None else now)
    if not verdict.accepted:
        decision = msgspec.structs.replace(decision, accepted=False, rejection_reason=verdict.reason, command_id=None)
    elif decision.action is not DecisionAction.WAIT:
        decision = msgspec.structs.replace(decision, command_id=command_id(run.run_id, decision))
    return Decided(decision, verdict, to_command(decision, signals))


def to_command(decision: AdaptationDecision, signals: TrainingSignals) -> AdaptationCommand | None:
    """The command carrying out an accepted, actionable ``decision``; None for WAIT or a rejected one.

    The command carries the slot's stage in ``signals`` (what the decision was
    made on), so Tolaria can refuse it if it arrives after the slot moved on.
    """
    if decision.action is DecisionAction.WAIT or not decision.accepted or decision.command_id is None:
        return None
    stage = next((r.stage for r in signals.seeds if r.slot_id == decision.slot_id), None)
    return AdaptationCommand(
        command_id=decision.command_id,
        action=CommandAction(decision.action.value),
        slot_id=decision.slot_id,
        blueprint=decision.blueprint,
        blueprint_config=dict(decision.blueprint_config),
        epoch=decision.epoch,
        reason=decision.reason,
        issued_by=decision.policy,
        expected_stage=stage,
    )
