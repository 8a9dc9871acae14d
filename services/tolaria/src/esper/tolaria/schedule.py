"""Learning-rate schedules: the factor applied to the base rate at each training step.

* ``constant``: 1 throughout.
* ``cosine``: from 1 down to 0 over the whole run.
* ``anneal``: 1 for the first ``1 - ANNEAL_FRACTION`` of the steps, then a
  cosine down to 0 over the rest. The long constant phase trains (and lets
  seeds grow) at full rate; the short tail settles the weights so the final
  epoch does not land on a random point of the constant-rate noise.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "constant", "anneal")
#: Share of the run's steps over which ``anneal`` decays the rate.
ANNEAL_FRACTION = 0.15


def check_schedule(name: str) -> str:
    if name not in LR_SCHEDULES:
        raise ValueError(f"field 'lr_schedule': must be one of {', '.join(LR_SCHEDULES)} (value {name!r})")
    return name


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total_steps`` (clamped to the run)."""
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    progress = min(max(step, 0), total_steps) / total_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    start = 1.0 - ANNEAL_FRACTION
    if progress <= start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (progress - start) / ANNEAL_FRACTION))
