"""Operator actions behind the control API: submit, pause/resume/stop, force an adaptation, switch policy.

Each action becomes Leyline messages on the bus, exactly like the decision
loop's: run control and forced adaptations are :class:`AdaptationCommand`\\ s
with ``issued_by="operator"`` and a fresh uuid ``command_id``. A forced
adaptation passes the :class:`SafetyMonitor` unless ``override`` is set; it is
also published as an :class:`AdaptationDecision` (``policy="operator"``,
accepted or not), so Nissa records operator interventions and their verdicts
next to the policy's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from esper.leyline import (
    RUN_ACTIONS,
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    Envelope,
    TrainingJob,
)
from esper.leyline import streams as ls
from esper.leyline.commands import BlueprintConfig
from esper.oona import Bus
from esper.tamiyo.collector import DecisionRecord, HealthCollector, RunState
from esper.tamiyo.safety import SafetyMonitor, Verdict
from esper.tamiyo.service.metrics import TamiyoMetrics

OPERATOR = "operator"


class UnknownRunError(LookupError):
    """No run with this id (the API answers 404)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"unknown run {run_id!r}")


class ConflictError(RuntimeError):
    """The action does not fit the run's state (the API answers 409 with this reason)."""


@dataclass(frozen=True, slots=True)
class ForcedAdaptation:
    """An operator's adaptation of one slot. ``override`` bypasses the safety monitor."""

    action: CommandAction
    slot_id: str
    blueprint: str | None = None
    blueprint_config: BlueprintConfig | None = None
    reason: str = ""
    override: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an operator action: the verdict and, when published, the command id."""

    verdict: Verdict
    command_id: str | None = None


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


class RunControl:
    """The operator's levers on runs; every method publishes before it returns."""

    def __init__(
        self, collector: HealthCollector, safety: SafetyMonitor, bus: Bus, metrics: TamiyoMetrics | None = None
    ) -> None:
        self.collector = collector
        self.safety = safety
        self.bus = bus
        self.metrics = metrics or TamiyoMetrics()

    def run(self, run_id: str) -> RunState:
        run = self.collector.get(run_id)
        if run is None:
            raise UnknownRunError(run_id)
        return run

    async def submit(self, job: TrainingJob, run_id: str | None = None) -> str:
        """Register the run and publish its job for Tolaria; returns the run id."""
        run_id = run_id or new_run_id()
        if self.collector.get(run_id) is not None:
            raise ConflictError(f"run {run_id!r} already exists")
        run, _ = self.collector.register(run_id, job)
        await self.collector.save(run)
        await self.bus.publish(ls.CONTROL_JOBS, Envelope(payload=job, run_id=run_id))
        return run_id

    async def control(self, run_id: str, action: CommandAction, reason: str = "") -> str:
        """Pause, resume or stop ``run_id``; returns the command id."""
        if action not in RUN_ACTIONS:
            raise ValueError(f"field 'action': {action.value!r} is not run control")
        run = self.run(run_id)
        async with run.lock:
            self._live(run, stopping=action is CommandAction.STOP)
            epoch = run.signals.epoch if run.signals else None
            command = AdaptationCommand(
                command_id=uuid.uuid4().hex,
                action=action,
                epoch=epoch,
                reason=reason or f"{action.value} by operator",
                issued_by=OPERATOR,
            )
            await self.bus.publish(ls.CONTROL_COMMANDS, Envelope(payload=command, run_id=run_id))
            # Tamiyo stops deciding at once; Tolaria follows at its next epoch boundary.
            if action is CommandAction.PAUSE:
                run.paused = True
            elif action is CommandAction.RESUME:
                run.paused = False
            else:
                run.stopped = True
            self.collector.record(
                run,
                DecisionRecord(
                    epoch=epoch,
                    action=action.value,
                    reason=command.reason,
                    accepted=True,
                    policy=OPERATOR,
                    command_id=command.command_id,
                ),
            )
            self.metrics.decisions.labels(action.value, OPERATOR).inc()
            await self.collector.save(run)
            return command.command_id

    async def adapt(self, run_id: str, request: ForcedAdaptation) -> Outcome:
        """Force an adaptation; published only if the safety monitor accepts it or ``override`` is set."""
        run = self.run(run_id)
        async with run.lock:
            self._live(run)
            epoch = run.signals.epoch if run.signals else None
            reason = request.reason or f"{request.action.value} forced by operator"
            command = AdaptationCommand(
                command_id=uuid.uuid4().hex,
                action=request.action,
                slot_id=request.slot_id,
                blueprint=request.blueprint,
                blueprint_config=dict(request.blueprint_config or {}),
                epoch=epoch,
                reason=reason,
                issued_by=OPERATOR,
                override=request.override,
            )
            verdict = Verdict(True) if request.override else self.safety.validate(command, run.snapshot())
            decision = AdaptationDecision(
                decision_id=f"{OPERATOR}-{command.command_id}",
                epoch=epoch if epoch is not None else 0,
                action=DecisionAction(request.action.value),
                reason=reason + (" (override: safety monitor bypassed)" if request.override else ""),
                confidence=1.0,
                slot_id=request.slot_id,
                blueprint=request.blueprint,
                blueprint_config=dict(command.blueprint_config),
                policy=OPERATOR,
                accepted=verdict.accepted,
                rejection_reason=None if verdict.accepted else verdict.reason,
                command_id=command.command_id if verdict.accepted else None,
            )
            if verdict.accepted:
                await self.bus.publish(ls.CONTROL_COMMANDS, Envelope(payload=command, run_id=run_id))
            else:
                self.metrics.rejections.labels(verdict.category).inc()
            await self.bus.publish(ls.CONTROL_DECISIONS, Envelope(payload=decision, run_id=run_id))
            self.metrics.decisions.labels(decision.action.value, OPERATOR).inc()
            self.collector.record(run, decision)
            await self.collector.save(run)
            return Outcome(verdict, decision.command_id)

    async def set_policy(self, run_id: str, name: str) -> None:
        """Switch the run's policy (``heuristic`` or ``none``) from its next epoch on."""
        run = self.run(run_id)
        async with run.lock:
            if name != run.policy_name:
                await self.collector.switch_policy(run, name)

    @staticmethod
    def _live(run: RunState, *, stopping: bool = False) -> None:
        if run.finished:
            raise ConflictError(f"run {run.run_id!r} has finished")
        if run.stopped and not stopping:
            raise ConflictError(f"run {run.run_id!r} was stopped")
