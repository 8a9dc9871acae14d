"""SafetyMonitor: the check every adaptation passes before it reaches Tolaria.

Policy decisions and operator-forced commands alike are validated against the
run's last known state (the slot reports of its newest :class:`TrainingSignals`).
A rejection's reason starts with a short category and a colon, e.g.
``"embargo: slot 's1' is EMBARGOED"``; Nissa uses the category as a metric label:

=====================  =========================================================
category               rejected because
=====================  =========================================================
``illegal_transition``  Leyline's transition table forbids the step (or the slot is unknown)
``embargo``            germinating a slot that is still cooling down after a cull
``budget``             the seed would take the run over its parameter budget
``max_active_seeds``   germinating while the maximum of live seeds is reached
``blueprint``          the blueprint (with that configuration) is not offered at the slot (model graph)
``stale``              the decision reads telemetry that is too old or superseded
``low_confidence``     the policy's confidence is below the floor
=====================  =========================================================

The monitor checks legality, not merit: the quality gates G1-G5 stay with
Kasmina, which runs them when Tolaria applies the command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from esper.leyline import (
    ACTIVE_STAGES,
    RUN_ACTIONS,
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    DecisionAction,
    SeedStage,
    SeedStateReport,
    is_legal,
)
from esper.leyline.stages import next_stage
from esper.tamiyo.policy import CostModel

#: The rejection categories, in the order the monitor checks them.
CATEGORIES = ("stale", "low_confidence", "illegal_transition", "embargo", "max_active_seeds", "blueprint", "budget")


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    """Thresholds of the :class:`SafetyMonitor` (configuration, never literals in the checks)."""

    #: live seeds (GERMINATED .. PROBATIONARY) a run may hold at once (the heuristic's default plans for as many)
    max_active_seeds: int = 3
    #: telemetry older than this many seconds is stale (``produced_at`` against the clock)
    max_telemetry_age_s: float = 60.0
    #: policy decisions below this confidence are rejected
    min_confidence: float = 0.3
    #: parameter budget of runs whose job sets none (None: unlimited)
    default_param_budget: int | None = None

    def __post_init__(self) -> None:
        if self.max_active_seeds < 1:
            raise ValueError(f"field 'max_active_seeds': must be >= 1 (value {self.max_active_seeds!r})")
        if not math.isfinite(self.max_telemetry_age_s) or self.max_telemetry_age_s <= 0:
            raise ValueError(f"field 'max_telemetry_age_s': must be a number > 0 (value {self.max_telemetry_age_s!r})")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"field 'min_confidence': must be in [0, 1] (value {self.min_confidence!r})")
        if self.default_param_budget is not None and self.default_param_budget < 1:
            raise ValueError(f"field 'default_param_budget': must be >= 1 (value {self.default_param_budget!r})")


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What the monitor knows of a run when it validates an adaptation.

    ``seeds`` are the slot reports of the newest telemetry (``telemetry_epoch``,
    produced at ``telemetry_at``, seconds since the epoch); ``params_total`` is
    the model's parameter count then. ``cost_model`` prices a blueprint at a
    slot (needed only when there is a budget). A ``paused`` run's telemetry
    does not age: its slots cannot change until it resumes.
    """

    run_id: str
    seeds: Mapping[str, SeedStateReport] = field(default_factory=dict)
    params_total: int = 0
    telemetry_epoch: int | None = None
    telemetry_at: float | None = None
    paused: bool = False
    param_budget: int | None = None
    cost_model: CostModel | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The monitor's answer. ``reason`` names the category and why (empty when accepted)."""

    accepted: bool
    reason: str = ""

    @property
    def category(self) -> str | None:
        """The rejection category (``"budget"``, ...), None when accepted."""
        return None if self.accepted else self.reason.split(":", 1)[0]


_ACCEPTED = Verdict(True)

_TARGET: dict[CommandAction, SeedStage] = {
    CommandAction.GERMINATE: SeedStage.GERMINATED,
    CommandAction.CULL: SeedStage.CULLED,
    CommandAction.FOSSILIZE: SeedStage.FOSSILIZED,
}


def _reject(category: str, why: str) -> Verdict:
    return Verdict(False, f"{category}: {why}")


class SafetyMonitor:
    """Validates adaptations against Leyline's lifecycle table and the configured limits."""

    def __init__(self, config: SafetyConfig | None = None) -> None:
        self.config = config or SafetyConfig()

    def validate(
        self, action: AdaptationDecision | AdaptationCommand, run: RunSnapshot, *, now: float | None = None
    ) -> Verdict:
        """Accept or reject ``action`` (a policy decision or a forced command) on ``run``.

        A WAIT decision and run-control commands (pause, resume, stop) change no
        slot and are always accepted. ``now`` defaults to the wall clock.
        """
        if isinstance(action, AdaptationDecision):
            if action.action is DecisionAction.WAIT:
                return _ACCEPTED
            command = CommandAction(action.action.value)
            epoch: int | None = action.epoch
            confidence: float | None = action.confidence
        else:
            command, epoch, confidence = action.action, action.epoch, None
            if command in RUN_ACTIONS:
                return _ACCEPTED
        now = time.time() if now is None else now
        for verdict in (
            self._stale(run, epoch, now),
            self._confidence(confidence),
            self._slot_rules(command, action.slot_id, action.blueprint, action.blueprint_config, run),
        ):
            if verdict is not None:
                return verdict
        return _ACCEPTED

    def _stale(self, run: RunSnapshot, epoch: int | None, now: float) -> Verdict | None:
        if run.telemetry_epoch is None or run.telemetry_at is None:
            return _reject("stale", f"no telemetry received yet for run {run.run_id!r}; slot stages unknown")
        if epoch is not None and epoch < run.telemetry_epoch:
            return _reject("stale", f"decided on epoch {epoch} but telemetry is already at epoch {run.telemetry_epoch}")
        age = now - run.telemetry_at
        if not run.paused and age > self.config.max_telemetry_age_s:
            return _reject(
                "stale",
                f"telemetry of epoch {run.telemetry_epoch} is {age:.1f} s old "
                f"(max {self.config.max_telemetry_age_s:g} s)",
            )
        return None

    def _confidence(self, confidence: float | None) -> Verdict | None:
        floor = self.config.min_confidence
        if confidence is not None and not confidence >= floor:
            return _reject("low_confidence", f"confidence {confidence:.3f} < floor {floor:.3f}")
        return None

    def _slot_rules(
        self,
        command: CommandAction,
        slot_id: str | None,
        blueprint: str | None,
        blueprint_config: Mapping[str, object],
        run: RunSnapshot,
    ) -> Verdict | None:
        report = run.seeds.get(slot_id) if slot_id is not None else None
        if report is None:
            known = ", ".join(sorted(run.seeds)) or "none"
            return _reject("illegal_transition", f"run has no slot {slot_id!r} (slots: {known})")
        stage = SeedStage(report.stage)
        if command is CommandAction.GERMINATE:
            if stage in (SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING) or report.embargo_epochs_left > 0:
                return _reject(
                    "embargo",
                    f"slot {slot_id!r} is {stage.name} with {report.embargo_epochs_left} embargo epoch(s) left",
                )
        verdict = self._transition(command, slot_id, stage)
        if verdict is not None or command is not CommandAction.GERMINATE:
            return verdict
        active = sorted(r.slot_id for r in run.seeds.values() if r.stage in ACTIVE_STAGES)
        if len(active) >= self.config.max_active_seeds:
            return _reject(
                "max_active_seeds",
                f"{len(active)} live seed(s) ({', '.join(active)}) >= max {self.config.max_active_seeds}",
            )
        if run.cost_model is not None and slot_id is not None and blueprint is not None:
            if run.cost_model(slot_id, blueprint, dict(blueprint_config)) is None:
                return _reject(
                    "blueprint",
                    f"{blueprint!r} with {dict(blueprint_config)!r} is not offered at slot {slot_id!r} "
                    "by the run's model graph",
                )
        return self._budget(slot_id, blueprint, blueprint_config, run)

    @staticmethod
    def _transition(command: CommandAction, slot_id: str | None, stage: SeedStage) -> Verdict | None:
        if command is CommandAction.ADVANCE:
            target = next_stage(stage) if stage in ACTIVE_STAGES else None
            if target is None or not is_legal(stage, target):
                return _reject("illegal_transition", f"slot {slot_id!r} is {stage.name}: it has no forward step")
            return None
        if command is CommandAction.SET_ALPHA:
            if stage is not SeedStage.BLENDING:
                return _reject(
                    "illegal_transition", f"slot {slot_id!r} is {stage.name}: alpha is set only while BLENDING"
                )
            return None
        target = _TARGET[command]
        if not is_legal(stage, target):
            return _reject("illegal_transition", f"slot {slot_id!r}: {stage.name} -> {target.name} is not allowed")
        return None

    def _budget(
        self, slot_id: str | None, blueprint: str | None, config: Mapping[str, object], run: RunSnapshot
    ) -> Verdict | None:
        budget = run.param_budget if run.param_budget is not None else self.config.default_param_budget
        if budget is None:
            return None
        if run.cost_model is None or slot_id is None or blueprint is None:
            return _reject("budget", f"cannot price blueprint {blueprint!r} at slot {slot_id!r}: no cost model")
        cost = run.cost_model(slot_id, blueprint, dict(config))
        if cost is None:
            return _reject("budget", f"blueprint {blueprint!r} with {dict(config)!r} does not fit slot {slot_id!r}")
        if run.params_total + cost > budget:
            return _reject(
                "budget",
                f"{blueprint!r} at {slot_id!r} adds {cost} params: {run.params_total} + {cost} > budget {budget}",
            )
        return None
