"""Training modes: what a step trains, decided from the slots' stages."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from esper.leyline import SeedStage

#: Stages whose seed takes part in the forward value (its optimizer steps in BLENDED mode).
BLENDED_STAGES = frozenset({SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY})
#: Stages whose seed optimizer steps.
STEPPED_STAGES = frozenset({SeedStage.TRAINING, *BLENDED_STAGES, SeedStage.FOSSILIZED})
#: Stages of a settled slot: nothing in flight (see Trainer.round_epochs).
SETTLED_STAGES = frozenset({SeedStage.DORMANT, SeedStage.FOSSILIZED})
#: Stages whose seed is in the network's forward for good unless culled (see TrainerConfig.host_wait_steps).
JOINED_STAGES = frozenset({*BLENDED_STAGES, SeedStage.FOSSILIZED})
#: Stages whose seed is measured counterfactually.
MEASURED_STAGES = frozenset({SeedStage.TRAINING, *BLENDED_STAGES})


class TrainingMode(StrEnum):
    """NORMAL: host only. ISOLATED: seeds learn on detached host features. BLENDED: a seed is in the forward value."""

    NORMAL = "normal"
    ISOLATED = "isolated"
    BLENDED = "blended"


def training_mode(stages: Iterable[SeedStage]) -> TrainingMode:
    """The mode a step runs in, given every slot's stage."""
    stages = set(stages)
    if stages & BLENDED_STAGES:
        return TrainingMode.BLENDED
    if SeedStage.TRAINING in stages:
        return TrainingMode.ISOLATED
    return TrainingMode.NORMAL
