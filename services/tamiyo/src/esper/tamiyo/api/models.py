"""Request and response models of the control API (the OpenAPI schema is the contract)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from esper.leyline import TrainingJob
from esper.tamiyo.service.registry import NAME_PATTERN

#: A policy's name: named (heuristic, none) or registered (GET /policies); which names exist is checked per request.
PolicyName = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
AdaptAction = Literal["germinate", "advance", "cull", "fossilize"]
ConfigValue = bool | int | float | str
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is shown as null."""
    return value if value is not None and math.isfinite(value) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _annotation(t: mi.Type) -> tuple[Any, dict[str, Any]]:
    """A pydantic annotation and Field constraints for one msgspec field type."""
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(inner) == 1 and len(inner) < len(t.types):
            annotation, constraints = _annotation(inner[0])
            return annotation | None, constraints
    if isinstance(t, mi.LiteralType):
        return Literal[tuple(t.values)], {}
    bounds = {k: getattr(t, k, None) for k in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern")}
    constraints = {k: v for k, v in bounds.items() if v is not None}
    if isinstance(t, mi.BoolType):
        return bool, {}
    if isinstance(t, mi.IntType):
        return int, constraints
    if isinstance(t, mi.FloatType):
        return float, {**constraints, "allow_inf_nan": False}
    if isinstance(t, mi.StrType):
        return str, constraints
    raise TypeError(f"no request field for {t!r}")


def _job_fields() -> dict[str, Any]:
    """``TrainingJob``'s fields as pydantic field definitions: the request body is derived, never re-spelled."""
    info = mi.type_info(TrainingJob)
    assert isinstance(info, mi.StructType)
    fields: dict[str, Any] = {}
    for f in info.fields:
        annotation, constraints = _annotation(f.type)
        if f.name == "policy":
            annotation, constraints = str, {"min_length": 1, "max_length": 64, "pattern": NAME_PATTERN}
        default = f.default if f.default is not msgspec.NODEFAULT else ...
        fields[f.name] = (annotation, Field(default, **constraints))
    return fields


#: A training job (``TrainingJob``'s fields, constraints and defaults) and optionally the id the run should have.
SubmitRun = create_model(
    "SubmitRun",
    __base__=_Strict,
    run_id=(str | None, Field(None, pattern=RUN_ID_PATTERN, description="default: run-<8 hex>")),
    **_job_fields(),
)


class Adaptation(_Strict):
    """An adaptation forced by an operator; it passes the safety monitor unless ``override`` is true."""

    action: AdaptAction
    slot_id: str = Field(..., min_length=1, max_length=64)
    blueprint: str | None = Field(
        None, min_length=1, max_length=64, validate_default=True, description="required to germinate"
    )
    blueprint_config: dict[str, ConfigValue] | None = Field(None, max_length=32)
    reason: str = Field("", max_length=1000)
    override: bool = False

    @field_validator("blueprint")
    @classmethod
    def _blueprint(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Which blueprints fit a slot is the run's model graph's to say (the safety monitor checks it).
        if value is None and info.data.get("action") == "germinate":
            raise ValueError("germinate needs a blueprint")
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


class PolicyView(BaseModel):
    """A policy runs may be given: ``named`` (built in) or ``learned`` (a file in the policy directory)."""

    name: str
    kind: str
    path: str | None = None
    available: bool = Field(True, description="false: this Tamiyo cannot load it (reason says why)")
    reason: str | None = None


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
