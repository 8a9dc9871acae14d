"""The governor: catches a diverging step and returns training to the last good state.

A step *trips* the governor when its loss is NaN/inf, or exceeds the mean of
the recent step losses by more than ``sigma`` standard deviations (once
``min_history`` losses are known). The trainer then restores the in-memory
snapshot of the last good epoch boundary (model weights AND optimizer
states), culls the seed held responsible, records why, and goes on.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper.leyline import ACTIVE_STAGES, SeedStage


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    """``sigma``: spike threshold in standard deviations of the last ``window`` step losses."""

    sigma: float = 6.0
    window: int = 100
    min_history: int = 30
    enabled: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"field 'sigma': must be a finite number > 0 (value {self.sigma!r})")
        if self.window < 2 or self.min_history < 2 or self.min_history > self.window:
            raise ValueError(
                f"fields 'window'/'min_history': need 2 <= min_history <= window (values {self.window}, "
                f"{self.min_history})"
            )


@dataclass(frozen=True, slots=True)
class Trip:
    """Why the governor stopped a step."""

    kind: str  # "non_finite" | "spike"
    loss: float
    reason: str


@dataclass(slots=True)
class Snapshot:
    """Deep copies of model and optimizer state at an epoch boundary."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]


class Governor:
    """Watches step losses and holds the rollback snapshot."""

    def __init__(self, config: GovernorConfig | None = None) -> None:
        self.config = config or GovernorConfig()
        self.losses: deque[float] = deque(maxlen=self.config.window)
        self.snapshot: Snapshot | None = None
        self.rollbacks = 0

    def check(self, loss: float) -> Trip | None:
        """Judge one step's loss; a good loss joins the history."""
        if not self.config.enabled:
            return None
        if not math.isfinite(loss):
            return Trip("non_finite", loss, f"loss is {loss} (not finite)")
        if len(self.losses) >= self.config.min_history:
            n = len(self.losses)
            mean = sum(self.losses) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / (n - 1))
            limit = mean + self.config.sigma * max(std, 1e-8)
            if loss > limit:
                return Trip(
                    "spike",
                    loss,
                    f"loss {loss:.4g} spiked beyond {self.config.sigma:g} std of the last {n} steps "
                    f"(mean {mean:.4g}, std {std:.3g})",
                )
        self.losses.append(loss)
        return None

    def take_snapshot(self, epoch: int, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Remember the state at the end of ``epoch`` as the last good state."""
        self.snapshot = Snapshot(
            epoch=epoch,
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            optimizers={name: copy.deepcopy(opt.state_dict()) for name, opt in optimizers.items()},
        )

    def restore(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> int:
        """Load the snapshot back into ``model`` and ``optimizers``; returns the snapshot's epoch.

        Optimizers created after the snapshot (none exist: commands only apply at
        epoch boundaries, before the snapshot is taken) would keep their state.
        """
        if self.snapshot is None:
            raise RuntimeError("governor has no snapshot to roll back to")
        model.load_state_dict(self.snapshot.model)
        for name, opt in optimizers.items():
            if name in self.snapshot.optimizers:
                opt.load_state_dict(copy.deepcopy(self.snapshot.optimizers[name]))
        self.rollbacks += 1
        return self.snapshot.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.rollbacks = state["rollbacks"]


def offending_slot(model: Any) -> str | None:
    """The slot to blame for a trip: one whose seed holds non-finite weights, else the live
    seed that most recently changed stage (fewest epochs in its stage), else None."""
    live = [(slot_id, slot) for slot_id, slot in model.slots.items() if SeedStage(slot.stage) in ACTIVE_STAGES]
    for slot_id, slot in live:
        if slot.seed is not None and any(not torch.isfinite(p).all() for p in slot.seed.parameters()):
            return slot_id
    if not live:
        return None
    return min(live, key=lambda item: item[1].epochs_in_stage)[0]
