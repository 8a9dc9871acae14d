"""Run state -> response models (NaN and infinity shown as null: JSON has neither)."""

from __future__ import annotations

import math
from typing import Any

from esper.leyline import SeedStage
from esper.tamiyo.api.models import DecisionView, RunStatus, RunSummary, SlotView, finite
from esper.tamiyo.collector import RunState


def summary(run: RunState) -> RunSummary:
    s = run.signals
    return RunSummary(
        run_id=run.run_id,
        task=run.job.task,
        policy=run.policy_name,
        epoch=s.epoch if s else None,
        epochs=run.job.epochs,
        val_accuracy=finite(s.val_accuracy) if s else None,
        paused=run.paused,
        stopped=run.stopped,
        finished=run.finished,
        submitted_at=run.submitted_at,
    )


def status(run: RunState) -> RunStatus:
    s = run.signals
    slots = [
        SlotView(
            slot_id=r.slot_id,
            stage=SeedStage(r.stage).name,
            seed_id=r.seed_id,
            blueprint=r.blueprint,
            alpha=finite(r.alpha),
            epochs_in_stage=r.epochs_in_stage,
            params=r.params,
            contribution=finite(r.contribution),
            embargo_epochs_left=r.embargo_epochs_left,
        )
        for r in (s.seeds if s else [])
    ]
    decisions = [
        DecisionView(
            epoch=d.epoch,
            action=d.action,
            reason=d.reason,
            confidence=finite(d.confidence),
            accepted=d.accepted,
            rejection_reason=d.rejection_reason,
            policy=d.policy,
            slot_id=d.slot_id,
            blueprint=d.blueprint,
            command_id=d.command_id,
            at=d.at,
            result=d.result,
            result_reason=d.result_reason,
        )
        for d in run.decisions
    ]
    return RunStatus(
        **summary(run).model_dump(),
        job=_json_safe(run.job.to_dict()),
        train_loss=finite(s.train_loss) if s else None,
        val_loss=finite(s.val_loss) if s else None,
        train_accuracy=finite(s.train_accuracy) if s else None,
        params_total=s.params_total if s else None,
        last_decided_epoch=run.last_decided_epoch if run.last_decided_epoch >= 0 else None,
        stale_skipped=run.stale_skipped,
        slots=slots,
        decisions=decisions,
        outcome=_json_safe(run.outcome),
        error=run.error,
    )


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
