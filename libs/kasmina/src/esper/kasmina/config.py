"""Kasmina's configuration and the alpha schedules that ramp a blending seed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from esper.leyline import GateThresholds

ALPHA_SCHEDULES = ("linear", "cosine", "sigmoid")
_SIGMOID_STEEPNESS = 10.0


@dataclass(frozen=True)
class KasminaConfig:
    """How slots behave: gate thresholds, the blending tempo and schedule, the embargo after a cull."""

    thresholds: GateThresholds = field(default_factory=GateThresholds)
    #: epochs the alpha ramp takes from its start to 1.0
    blend_epochs: int = 5
    #: "linear" | "cosine" | "sigmoid"
    alpha_schedule: str = "linear"
    #: epochs a culled slot stays EMBARGOED before it may germinate again
    embargo_epochs: int = 3
    #: False (the default, "joint"): a TRAINING seed is in the forward from TRAINING on, at full weight, and
    #: learns together with the host, as growth methods without isolation train; a seed starts as the
    #: identity, so joining changes nothing. True: a TRAINING seed reads detached host features and stays
    #: out of the forward value, so the host learns nothing from it until it blends in. Either way culling
    #: an unproven seed puts the host back as it was when the seed joined its forward (MorphogeneticModel.cull).
    #: Joint is the default because it grows better networks: level with their architecture trained from
    #: scratch on the growth benchmark, where isolation left them about half a point behind (README).
    isolate_seeds: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, GateThresholds):
            raise ValueError(f"KasminaConfig.thresholds must be a GateThresholds, got {self.thresholds!r}")
        if isinstance(self.blend_epochs, bool) or not isinstance(self.blend_epochs, int) or self.blend_epochs < 1:
            raise ValueError(f"KasminaConfig.blend_epochs must be an integer >= 1, got {self.blend_epochs!r}")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(
                f"KasminaConfig.alpha_schedule must be one of {', '.join(ALPHA_SCHEDULES)}, got {self.alpha_schedule!r}"
            )
        if isinstance(self.embargo_epochs, bool) or not isinstance(self.embargo_epochs, int) or self.embargo_epochs < 0:
            raise ValueError(f"KasminaConfig.embargo_epochs must be an integer >= 0, got {self.embargo_epochs!r}")
        if not isinstance(self.isolate_seeds, bool):
            raise ValueError(f"KasminaConfig.isolate_seeds must be true or false, got {self.isolate_seeds!r}")


def alpha_progress(schedule: str, t: float) -> float:
    """Fraction of the ramp done at progress ``t`` in [0, 1]: 0 at t=0, 1 at t=1, monotone in between."""
    t = min(1.0, max(0.0, t))
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return 0.5 - 0.5 * math.cos(math.pi * t)
    if schedule == "sigmoid":
        # A logistic curve rescaled so it starts exactly at 0 and ends exactly at 1.
        def s(u: float) -> float:
            return 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (u - 0.5)))

        lo, hi = s(0.0), s(1.0)
        return (s(t) - lo) / (hi - lo)
    raise ValueError(f"unknown alpha schedule {schedule!r} (known: {', '.join(ALPHA_SCHEDULES)})")
