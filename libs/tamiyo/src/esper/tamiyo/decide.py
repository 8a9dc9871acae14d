"""The one decide step: policy -> safety monitor -> command.

``esper train`` (Tolaria's trainer, in process) and the Tamiyo service (over
the bus) both call :func:`decide_boundary` (each of its decisions is one
:func:`decide`) with the same policy, the same :class:`SafetyMonitor`
configuration and the same view of the run, so a run makes the same decisions
on both paths.

A boundary may carry one decision per slot: a policy that can be asked about
the slots it has not acted on yet (:class:`~esper.tamiyo.policy.SlotwisePolicy`)
is asked again, on the run as its commands will leave it, until it waits, a
decision is refused, or every slot has one. Seeds in different slots then move
through their lifecycles side by side instead of one step per epoch in turn.

A decision the monitor rejects is kept (``accepted=False`` with the reason) and
yields no command. An accepted, actionable decision gets its command's
idempotency key from :func:`command_id`: deterministic, so an epoch decided
again after a crash produces the same key and Tolaria answers DUPLICATE rather
than applying it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import msgspec

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    LayerHealth,
    ModelGraph,
    SeedStage,
    SeedStateReport,
    TrainingSignals,
)
from esper.leyline.stages import next_stage
from esper.tamiyo.policy import Policy, is_slotwise
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
    exclude: frozenset[str] = frozenset(),
) -> Decided:
    """Ask ``policy`` about ``signals``, validate the answer against ``run``, and build its command.

    ``exclude`` (slots a slotwise policy must leave alone) is passed only when
    not empty, so any :class:`~esper.tamiyo.policy.Policy` works here.
    """
    if exclude:
        decision = policy.decide(signals, graph=graph, health=health, exclude=exclude)  # type: ignore[call-arg]
    else:
        decision = policy.decide(signals, graph=graph, health=health)
    verdict = safety.validate(decision, run, now=time.time() if now is None else now)
    if not verdict.accepted:
        decision = msgspec.structs.replace(decision, accepted=False, rejection_reason=verdict.reason, command_id=None)
    elif decision.action is not DecisionAction.WAIT:
        decision = msgspec.structs.replace(decision, command_id=command_id(run.run_id, decision))
    return Decided(decision, verdict, to_command(decision, signals))


def decide_boundary(
    policy: Policy,
    signals: TrainingSignals,
    run: RunSnapshot,
    safety: SafetyMonitor,
    *,
    graph: ModelGraph | None = None,
    health: LayerHealth | None = None,
    now: float | None = None,
) -> list[Decided]:
    """Every decision of the boundary after ``signals.epoch``, in the order their commands apply.

    The first is :func:`decide` on the run as it is. While the last one was
    accepted and names a slot, a slotwise policy is asked again with the slots
    acted on set aside (``exclude``) and the run as those commands will leave
    it (each such slot's report at the stage its command leads to, a
    germination's parameters added), and the monitor validates against that
    view too. It stops at a WAIT, a refusal, or an answer about a slot already
    acted on (dropped: the policy has nothing new to say). Every decision
    carries ``index`` and ``count``; ids after the first get ``.<index>``.
    """
    now = time.time() if now is None else now
    slotwise = is_slotwise(policy)
    decided: list[Decided] = []
    acted: set[str] = set()
    view, view_run = signals, run
    while True:
        if decided:
            step = decide(policy, view, view_run, safety, graph=graph, health=health, now=now, exclude=frozenset(acted))
            if step.decision.slot_id in acted:
                break
        else:
            step = decide(policy, view, view_run, safety, graph=graph, health=health, now=now)
        decided.append(step)
        slot = step.decision.slot_id
        if not slotwise or step.command is None or slot is None or len(acted) + 1 >= len(signals.seeds):
            break
        acted.add(slot)
        view, view_run = _after(view, view_run, step.decision)
    count = len(decided)
    return [_numbered(d, i, count, signals) for i, d in enumerate(decided)]


def _numbered(step: Decided, index: int, count: int, signals: TrainingSignals) -> Decided:
    decision = step.decision
    new_id = decision.decision_id if index == 0 else f"{decision.decision_id}.{index}"
    decision = msgspec.structs.replace(decision, index=index, count=count, decision_id=new_id)
    return Decided(decision, step.verdict, step.command if step.command is None else to_command(decision, signals))


#: The stage a slot command leaves its slot in (ADVANCE: the stage's forward step).
_LEADS_TO = {
    DecisionAction.GERMINATE: SeedStage.GERMINATED,
    DecisionAction.FOSSILIZE: SeedStage.FOSSILIZED,
    DecisionAction.CULL: SeedStage.CULLED,
}


def _after(
    signals: TrainingSignals, run: RunSnapshot, decision: AdaptationDecision
) -> tuple[TrainingSignals, RunSnapshot]:
    """``signals`` and ``run`` as the accepted ``decision``'s command will leave them (priced by the run's
    cost model: the model graph's prices)."""
    before = run.seeds.get(decision.slot_id or "")
    if before is None:
        return signals, run
    stage = _LEADS_TO.get(decision.action) or next_stage(before.stage) or before.stage
    added = 0
    if decision.action is DecisionAction.GERMINATE and decision.blueprint and run.cost_model is not None:
        added = run.cost_model(before.slot_id, decision.blueprint, decision.blueprint_config) or 0
    report = SeedStateReport(
        slot_id=before.slot_id,
        stage=stage,
        seed_id=before.seed_id if decision.action is not DecisionAction.GERMINATE else None,
        blueprint=decision.blueprint if decision.action is DecisionAction.GERMINATE else before.blueprint,
        alpha=before.alpha,
        params=before.params + added,
    )
    seeds = tuple(report if r.slot_id == report.slot_id else r for r in signals.seeds)
    view = msgspec.structs.replace(signals, seeds=seeds, params_total=signals.params_total + added)
    view_run = replace(run, seeds={**run.seeds, report.slot_id: report}, params_total=run.params_total + added)
    return view, view_run


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
