"""Operator actions behind the control API: submit, pause/resume/stop, force an adaptation, switch policy
(to a policy of the registry, :mod:`esper.tamiyo.service.registry`).

Each action becomes Leyline messages on the bus, exactly like the decision
loop's: run control and forced adaptations are :class:`AdaptationCommand`\\ s
with ``issued_by="operator"`` and a fresh uuid ``command_id``. A forced
adaptation passes the :class:`SafetyMonitor` unless ``override`` is set; it is
also published as an :class:`AdaptationDecision` (``policy="operator"``,
accepted or not), so Nissa records operator interventions and their verdicts
next to the policy's.

Every action that touches Redis has a deadline (``deadline_s``). A submission
is listed only once its job is on the jobs stream: the job is published before
the run's state is saved, and a job that could not be published within the
deadline leaves nothing behind (:class:`Unavailable`, the API's 503).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import RedisError

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
from esper.oona import Bus, BusUnavailable
from esper.tamiyo.collector import DecisionRecord, HealthCollector, RunState
from esper.tamiyo.safety import SafetyMonitor, Verdict
from esper.tamiyo.service.metrics import TamiyoMetrics
from esper.tamiyo.service.registry import PolicyRefused, PolicyRegistry

OPERATOR = "operator"
#: How long an operator action may wait for Redis before it is refused (seconds).
DEFAULT_DEADLINE_S = 5.0
#: Errors that mean "Redis did not answer in time", not "the request was wrong".
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (BusUnavailable, RedisError, OSError, TimeoutError)

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnknownRunError(LookupError):
    """No run with this id (the API answers 404)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"unknown run {run_id!r}")


class ConflictError(RuntimeError):
    """The action does not fit the run's state (the API answers 409 with this reason)."""


class Unavailable(RuntimeError):
    """Redis did not take the action within the deadline (the API answers 503 with ``Retry-After``).

    ``reason`` names the cause and what was left behind; ``retry_after_s`` is a
    sensible wait before trying again.
    """

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


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
        self,
        collector: HealthCollector,
        safety: SafetyMonitor,
        bus: Bus,
        metrics: TamiyoMetrics | None = None,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s!r}")
        self.collector = collector
        self.safety = safety
        self.bus = bus
        self.metrics = metrics or TamiyoMetrics()
        self.deadline_s = deadline_s
        # Submissions whose job is being published: a concurrent retry of one waits for its outcome.
        self._submitting: dict[str, asyncio.Future[None]] = {}

    def run(self, run_id: str) -> RunState:
        run = self.collector.get(run_id)
        if run is None:
            raise UnknownRunError(run_id)
        return run

    async def submit(self, job: TrainingJob, run_id: str | None = None) -> str:
        """Publish the run's job for Tolaria, then register and save it; returns the run id.

        The same ``run_id`` with the same job again is a retried submission and
        answers the same id (nothing is published twice); with another job it is
        a :class:`ConflictError`. When the job cannot be published within the
        deadline the run is forgotten and :class:`Unavailable` is raised. (A
        publish whose reply was lost may still have stored the job: the decision
        loop then registers the run from the jobs stream, and a retry with the
        same ``run_id`` answers it.) A failed save after a successful publish is
        logged, not raised: the job is on the stream and the next save stores
        the run.
        """
        run_id = run_id or new_run_id()
        in_flight = self._submitting.get(run_id)
        if in_flight is not None:
            await asyncio.shield(in_flight)  # its Unavailable is ours too: the job is not on the stream
        existing = self.collector.get(run_id)
        if existing is not None:
            if existing.job == job:
                return run_id
            raise ConflictError(f"run {run_id!r} already exists")
        run, _ = self.collector.register(run_id, job)
        outcome = self._submitting[run_id] = asyncio.get_running_loop().create_future()
        try:
            await self._within_deadline(
                self.bus.publish(ls.CONTROL_JOBS, Envelope(payload=job, run_id=run_id)),
                f"job of run {run_id!r} not enqueued; nothing was kept, submit it again",
            )
        except BaseException as exc:  # cancelled too: a run whose publish did not finish is not kept
            self.collector.forget(run_id)
            refusal = exc if isinstance(exc, Unavailable) else Unavailable(f"submission of {run_id!r} interrupted", 1)
            outcome.set_exception(refusal)
            outcome.exception()  # retrieved here; only a concurrent retry awaits it
            raise
        finally:
            self._submitting.pop(run_id, None)
        outcome.set_result(None)
        await self._save_later_if_unavailable(run)
        return run_id

    async def _within_deadline(self, step: Awaitable[T], left_behind: str) -> T:
        """Await ``step`` for at most ``deadline_s``; Redis trouble becomes :class:`Unavailable`."""
        try:
            async with asyncio.timeout(self.deadline_s):
                return await step
        except REDIS_UNAVAILABLE as exc:
            cause = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError) and not isinstance(exc, RedisError):
                cause = f"no answer within {self.deadline_s:g}s"
            raise Unavailable(f"Redis unavailable ({cause}): {left_behind}", self.deadline_s) from exc

    async def _save_later_if_unavailable(self, run: RunState) -> None:
        """Save ``run``; on Redis trouble log it (the next save of the run stores it) instead of failing."""
        try:
            async with asyncio.timeout(self.deadline_s):
                await self.collector.save(run)
        except REDIS_UNAVAILABLE as exc:
            log.warning("tamiyo: state of run %s not saved (%s); the next save stores it", run.run_id, exc)

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
            await self._within_deadline(
                self.bus.publish(ls.CONTROL_COMMANDS, Envelope(payload=command, run_id=run_id)),
                f"{action.value} of run {run_id!r} not sent; the run is unchanged, send it again",
            )
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
            await self._save_later_if_unavailable(run)
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
                await self._within_deadline(
                    self.bus.publish(ls.CONTROL_COMMANDS, Envelope(payload=command, run_id=run_id)),
                    f"forced {request.action.value} of run {run_id!r} not sent; send it again",
                )
            else:
                self.metrics.rejections.labels(verdict.category).inc()
            await self._within_deadline(
                self.bus.publish(ls.CONTROL_DECISIONS, Envelope(payload=decision, run_id=run_id)),
                f"the decision record of command {command.command_id} was not published"
                + (" (the command itself was)" if verdict.accepted else ""),
            )
            self.metrics.decisions.labels(decision.action.value, OPERATOR).inc()
            self.collector.record(run, decision)
            await self._save_later_if_unavailable(run)
            return Outcome(verdict, decision.command_id)

    @property
    def registry(self) -> PolicyRegistry:
        """The policies runs may be given (the collector's; named policies only when it has a plain tuple)."""
        policies = self.collector.policies
        return policies if isinstance(policies, PolicyRegistry) else PolicyRegistry()

    def check_policy(self, name: str) -> None:
        """:class:`PolicyRefused` unless runs may be given policy ``name`` here (registered, its extra present)."""
        if isinstance(self.collector.policies, PolicyRegistry):
            self.collector.policies.check(name)
        elif name not in self.collector.policies:
            known = ", ".join(self.collector.policies)
            raise PolicyRefused(f"field 'policy': unknown policy {name!r} (known: {known})")

    async def set_policy(self, run_id: str, name: str) -> None:
        """Switch the run's policy to the registered policy ``name`` from its next epoch on.

        The new policy is built first (a learned one loads its file, in a worker thread): a policy that cannot
        be built is :class:`PolicyRefused` and the run keeps the one it has.
        """
        run = self.run(run_id)
        self.check_policy(name)
        async with run.lock:
            if name == run.policy_name and await self.collector.policy_for(run) is not None:
                return
            try:
                policy = await asyncio.to_thread(self.collector.policy_factory, name, run.job)
            except PolicyRefused:
                raise
            except Exception as exc:  # a policy that cannot be built must not take the service down
                log.warning("tamiyo: policy %r for run %s cannot be built: %s", name, run_id, exc)
                raise PolicyRefused(f"field 'policy': policy {name!r} cannot be built: {exc}") from None
            await self._within_deadline(
                self.collector.switch_policy(run, name, policy), f"policy of run {run_id!r} switched but not saved"
            )

    @staticmethod
    def _live(run: RunState, *, stopping: bool = False) -> None:
        if run.finished:
            raise ConflictError(f"run {run.run_id!r} has finished")
        if run.stopped and not stopping:
            raise ConflictError(f"run {run.run_id!r} was stopped")
