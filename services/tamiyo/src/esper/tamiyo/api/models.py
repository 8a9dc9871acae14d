"""Request and response models of the control API (the OpenAPI schema is the contract)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from esper.tamiyo.service.wiring import POLICIES
from esper.tolaria.tasks import TASKS

PolicyName = Literal[POLICIES]  # type: ignore[valid-type]
TaskName = Literal[TASKS]  # type: ignore[valid-type]
AdaptAction = Literal["germinate", "advance", "cull", "fossilize"]
ConfigValue = bool | int | float | str
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is shown as null."""
    return value if value is not None and math.isfinite(value) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRun(_Strict):
    """A training job (``TrainingJob``'s fields) and optionally the id the run should have."""

    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN, description="default: run-<8 hex>")
    task: TaskName = "mnist1d"
    policy: PolicyName = "heuristic"
    epochs: int = Field(40, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    data_dir: str | None = Field(None, min_length=1, max_length=4096)
    max_train_samples: int | None = Field(None, ge=2, le=10**9)
    host_channels: int | None = Field(None, ge=1, le=4096)
    batch_size: int = Field(100, ge=1, le=1_000_000)
    lr: float = Field(1e-2, gt=0.0, le=10.0, allow_inf_nan=False)
    lr_schedule: Literal["cosine", "constant", "anneal"] = "cosine"
    param_budget: int | None = Field(None, ge=1, le=10**12)
    lockstep: bool = False
    lockstep_timeout_ms: int = Field(2_000, ge=0, le=3_600_000)


class Adaptation(_Strict):
    """An adaptation forced by an operator; it passes the safety monitor unless ``override`` is true."""

    action: AdaptAction
    slot_id: str = Field(..., min_length=1, max_length=64)
    blueprint: str | None = Field(None, validate_default=True, description="required to germinate")
    blueprint_config: dict[str, ConfigValue] | None = Field(None, max_length=32)
    reason: str = Field("", max_length=1000)
    override: bool = False

    @field_validator("blueprint")
    @classmethod
    def _blueprint(cls, value: str | None, info: ValidationInfo) -> str | None:
        from esper.kasmina import list_blueprints

        if value is None:
            if info.data.get("action") == "germinate":
                raise ValueError("germinate needs a blueprint")
            return None
        known = list_blueprints()
        if value not in known:
            raise ValueError(f"unknown blueprint {value!r} (known: {', '.join(known)})")
        return value

    @field_validator("blueprint_config")
    @classmethod
    def _finite_config(cls, value: dict[str, ConfigValue] | None) -> dict[str, ConfigValue] | None:
        for key, item in (value or {}).items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"value of {key!r} must be finite (value {item!r})")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
                raise ValueError(f"value of {key!r} is out of range (value {item!r})")
        return value


class PolicyChoice(_Strict):
    policy: PolicyName


class ControlRequest(_Strict):
    """Optional body of pause/resume/stop."""

    reason: str = Field("", max_length=1000)


class Submitted(BaseModel):
    run_id: str


class CommandIssued(BaseModel):
    run_id: str
    command_id: str


class Problem(BaseModel):
    reason: str


class SlotView(BaseModel):
    slot_id: str
    stage: str
    seed_id: str | None = None
    blueprint: str | None = None
    alpha: float | None = None
    epochs_in_stage: int = 0
    params: int = 0
    contribution: float | None = None
    embargo_epochs_left: int = 0


class DecisionView(BaseModel):
    epoch: int | None
    action: str
    reason: str
    confidence: float | None
    accepted: bool
    rejection_reason: str | None = None
    policy: str
    slot_id: str | None = None
    blueprint: str | None = None
    command_id: str | None = None
    at: float
    result: str | None = Field(None, description="Tolaria's answer: applied | rejected | duplicate")
    result_reason: str | None = None


class RunSummary(BaseModel):
    run_id: str
    task: str
    policy: str
    epoch: int | None
    epochs: int
    val_accuracy: float | None
    paused: bool
    stopped: bool
    finished: bool
    submitted_at: float


class RunStatus(RunSummary):
    job: dict[str, Any]
    train_loss: float | None
    val_loss: float | None
    train_accuracy: float | None
    params_total: int | None
    last_decided_epoch: int | None
    stale_skipped: int
    slots: list[SlotView]
    decisions: list[DecisionView]
    outcome: dict[str, Any] = Field(default_factory=dict, description="run_finished attributes")
    error: str | None = None
