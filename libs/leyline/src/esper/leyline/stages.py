"""Seed lifecycle stages and the one table of legal transitions.

Every component asks this module whether a step is allowed; nobody else keeps
a copy of the table.
"""

from __future__ import annotations

from enum import IntEnum


class SeedStage(IntEnum):
    """Where a seed slot is in its life. Integer values are stable wire values."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    SHADOWING = 4
    PROBATIONARY = 5
    FOSSILIZED = 6
    CULLED = 7
    EMBARGOED = 8
    RESETTING = 9


_CULLABLE = (
    SeedStage.GERMINATED,
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.SHADOWING,
    SeedStage.PROBATIONARY,
)

#: stage -> stages it may move to next.
TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
    SeedStage.BLENDING: frozenset({SeedStage.SHADOWING, SeedStage.CULLED}),
    SeedStage.SHADOWING: frozenset({SeedStage.PROBATIONARY, SeedStage.CULLED}),
    SeedStage.PROBATIONARY: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset({SeedStage.EMBARGOED}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}

#: Stages in which a slot holds a live seed module that takes part in forward passes.
ACTIVE_STAGES: frozenset[SeedStage] = frozenset(
    {
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
    }
)

#: Stages in which a seed module exists (the live ones and a fossilized one).
SEEDED_STAGES: frozenset[SeedStage] = ACTIVE_STAGES | {SeedStage.FOSSILIZED}

#: Stages in which the seed reads a detached copy of the host features (the host learns nothing from it).
ISOLATED_STAGES: frozenset[SeedStage] = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING})

#: Stages that mix the seed into the host's output at the slot's alpha.
BLENDED_STAGES: frozenset[SeedStage] = frozenset({SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY})

#: Stages whose slot changes (or may change) the host's features, so Kasmina hooks its layer.
HOOKED_STAGES: frozenset[SeedStage] = frozenset({SeedStage.TRAINING, *BLENDED_STAGES, SeedStage.FOSSILIZED})

#: Stages in which the seed's parameters take optimizer steps.
STEPPED_STAGES: frozenset[SeedStage] = HOOKED_STAGES

#: Stages in which the seed's counterfactual contribution is measured each epoch.
MEASURED_STAGES: frozenset[SeedStage] = frozenset({SeedStage.TRAINING, *BLENDED_STAGES})


class IllegalTransitionError(ValueError):
    """A requested stage change that the transition table does not allow."""

    def __init__(self, current: SeedStage, target: SeedStage, slot_id: str | None = None) -> None:
        self.current = SeedStage(current)
        self.target = SeedStage(target)
        self.slot_id = slot_id
        where = f" in slot {slot_id!r}" if slot_id else ""
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS[self.current])) or "none"
        super().__init__(
            f"illegal seed transition{where}: {self.current.name} -> {self.target.name} "
            f"(allowed from {self.current.name}: {allowed})"
        )


def is_legal(current: SeedStage, target: SeedStage) -> bool:
    """Whether ``current -> target`` is a legal single step."""
    return SeedStage(target) in TRANSITIONS[SeedStage(current)]


def check_transition(current: SeedStage, target: SeedStage, slot_id: str | None = None) -> None:
    """Raise :class:`IllegalTransitionError` unless ``current -> target`` is legal."""
    if not is_legal(current, target):
        raise IllegalTransitionError(current, target, slot_id)


def next_stage(current: SeedStage) -> SeedStage | None:
    """The forward (non-cull) successor of ``current``, or None at the end of a path."""
    forward = [s for s in TRANSITIONS[SeedStage(current)] if s is not SeedStage.CULLED]
    return forward[0] if len(forward) == 1 else None


def is_cullable(stage: SeedStage) -> bool:
    return SeedStage(stage) in _CULLABLE
