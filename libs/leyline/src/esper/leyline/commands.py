"""Control messages: adaptation commands, their results, and the decisions behind them."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from esper.leyline.message import Message
from esper.leyline.stages import SeedStage

BlueprintConfig = dict[str, int | float | str | bool]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class CommandAction(StrEnum):
    # adaptations of one slot
    GERMINATE = "germinate"
    ADVANCE = "advance"
    CULL = "cull"
    FOSSILIZE = "fossilize"
    SET_ALPHA = "set_alpha"
    # run control
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


SLOT_ACTIONS = frozenset(
    {
        CommandAction.GERMINATE,
        CommandAction.ADVANCE,
        CommandAction.CULL,
        CommandAction.FOSSILIZE,
        CommandAction.SET_ALPHA,
    }
)
RUN_ACTIONS = frozenset({CommandAction.PAUSE, CommandAction.RESUME, CommandAction.STOP})


class AdaptationCommand(Message, frozen=True, kw_only=True):
    """An order to Tolaria (stream ``esper.control.commands``).

    ``command_id`` is the idempotency key: Tolaria applies a given id at most once.
    ``epoch`` is the epoch of the telemetry the decision was made on and
    ``expected_stage`` the slot's stage in it: Tolaria rejects the command as
    stale when the slot has moved on by the time it applies it (a decision
    that arrived an epoch late must not advance a seed twice).
    ``override`` says an operator bypassed the safety monitor.
    """

    message_type = "adaptation_command"

    command_id: Annotated[str, msgspec.Meta(min_length=1)]
    action: CommandAction
    slot_id: str | None = None
    blueprint: str | None = None
    blueprint_config: BlueprintConfig = msgspec.field(default_factory=dict)
    alpha: Fraction | None = None
    epoch: int | None = None
    reason: str = ""
    issued_by: str = "policy"
    override: bool = False
    expected_stage: SeedStage | None = None

    def __post_init__(self) -> None:
        if self.action in SLOT_ACTIONS and not self.slot_id:
            raise ValueError(f"field 'slot_id': action {self.action.value!r} needs a slot (value None)")
        if self.action is CommandAction.GERMINATE and not self.blueprint:
            raise ValueError("field 'blueprint': action 'germinate' needs a blueprint (value None)")
        if self.action is CommandAction.SET_ALPHA and self.alpha is None:
            raise ValueError("field 'alpha': action 'set_alpha' needs alpha (value None)")


class CommandStatus(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class CommandResult(Message, frozen=True, kw_only=True):
    """What Tolaria did with a command (stream ``esper.control.results``)."""

    message_type = "command_result"

    command_id: str
    action: CommandAction
    status: CommandStatus
    slot_id: str | None = None
    epoch: int | None = None
    reason: str = ""


class DecisionAction(StrEnum):
    WAIT = "wait"
    GERMINATE = "germinate"
    ADVANCE = "advance"
    CULL = "cull"
    FOSSILIZE = "fossilize"


class AdaptationDecision(Message, frozen=True, kw_only=True):
    """A policy's decision on one epoch, with its reason and confidence, and the
    safety monitor's verdict on it.

    A boundary may carry several decisions, at most one per slot (the policy is
    asked again about the slots it has not acted on yet): ``index`` is this
    decision's place among the ``count`` decisions of epoch ``epoch``, in the
    order they apply. A consumer waiting for a boundary's decisions (Tolaria in
    lockstep) has them all once it holds indexes ``0 .. count - 1``.
    """

    message_type = "adaptation_decision"

    decision_id: str
    epoch: int
    action: DecisionAction
    reason: str
    confidence: Fraction
    slot_id: str | None = None
    blueprint: str | None = None
    blueprint_config: BlueprintConfig = msgspec.field(default_factory=dict)
    policy: str = "heuristic"
    accepted: bool = True
    rejection_reason: str | None = None
    command_id: str | None = None
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    count: Annotated[int, msgspec.Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if self.index >= self.count:
            raise ValueError(f"field 'index': must be < count {self.count} (value {self.index!r})")
