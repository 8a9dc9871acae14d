"""Why a lifecycle step was refused."""

from __future__ import annotations

from esper.leyline import Gate, IllegalTransitionError, SeedStage


class GateFailedError(ValueError):
    """A forward lifecycle step refused by its gate; ``str(error)`` starts with the gate's reason."""

    def __init__(self, gate: Gate, reason: str, slot_id: str) -> None:
        self.gate = gate
        self.reason = reason
        self.slot_id = slot_id
        super().__init__(f"{reason} (slot {slot_id!r})")


class NoForwardStepError(IllegalTransitionError):
    """``advance`` on a slot whose stage has no gated forward step (DORMANT, CULLED, FOSSILIZED, ...)."""

    def __init__(self, stage: SeedStage, slot_id: str) -> None:
        super().__init__(stage, stage, slot_id)
        hint = " (germinate a seed first)" if stage is SeedStage.DORMANT else ""
        self.args = (f"slot {slot_id!r} is {stage.name}: advance has no forward step from there{hint}",)
