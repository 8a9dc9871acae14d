"""The governor: catches a diverging step and returns training to the last good state.

A step *trips* the governor when its loss is NaN/inf, or exceeds the mean of
the recent step losses by more than ``sigma`` standard deviations and is at
least ``min_ratio`` times that mean (once ``min_history`` losses are known),
for ``patience`` steps in a row. One outlier batch is not a divergence: late in
a healthy run the mean is near zero and the standard deviation tiny, and the
6-sigma rule on single steps rolled healthy MNIST-1D runs back 10 to 27 times
in 158 epochs (with the 3x ratio alone still 11 to 23 times, once 18 epochs in
a row), each time discarding an epoch of training. A spike does not join the
history, so a diverging run cannot raise its own limit. The trainer then restores the in-memory
snapshot of the last good epoch boundary (model weights AND optimizer
states), culls the seed held responsible, records why, and goes on.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper.leyline import ACTIVE_STAGES, SeedStage


@dataclass(frozen=True, slots=True)
class GovernorConfig:
    """``sigma``: spike threshold in standard deviations of the last ``window`` step losses; a spike is also
    at least ``min_ratio`` times their mean (1.0: the standard deviations alone decide); ``patience`` spikes in a
    row trip."""

    sigma: float = 6.0
    min_ratio: float = 3.0
    #: consecutive spike steps that trip (1: every spike)
    patience: int = 3
    window: int = 100
    min_history: int = 30
    enabled: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise ValueError(f"field 'sigma': must be a finite number > 0 (value {self.sigma!r})")
        if self.patience < 1:
            raise ValueError(f"field 'patience': must be >= 1 (value {self.patience!r})")
        if not math.isfinite(self.min_ratio) or self.min_ratio < 1.0:
            raise ValueError(f"field 'min_ratio': must be a finite number >= 1 (value {self.min_ratio!r})")
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
        self._sum = self._sum_sq = 0.0
        self.streak = 0

    def check(self, loss: float) -> Trip | None:
        """Judge one step's loss; a good loss joins the history.

        Mean and variance come from running sums over the window (O(1) a step).
        """
        if not self.config.enabled:
            return None
        if not math.isfinite(loss):
            return Trip("non_finite", loss, f"loss is {loss} (not finite)")
        n = len(self.losses)
        if n >= self.config.min_history:
            mean = self._sum / n
            std = math.sqrt(max(self._sum_sq - n * mean * mean, 0.0) / (n - 1))
            limit = max(mean + self.config.sigma * max(std, 1e-8), self.config.min_ratio * mean)
            if loss > limit:
                self.streak += 1
                if self.streak < self.config.patience:
                    return None
                self.streak = 0
                return Trip(
                    "spike",
                    loss,
                    f"loss {loss:.4g} spiked beyond {self.config.sigma:g} std of the last {n} steps "
                    f"and {self.config.min_ratio:g}x their mean (mean {mean:.4g}, std {std:.3g}), "
                    f"{self.config.patience} steps in a row",
                )
        self.streak = 0
        if n == self.losses.maxlen:
            old = self.losses[0]
            self._sum -= old
            self._sum_sq -= old * old
        self.losses.append(loss)
        self._sum += loss
        self._sum_sq += loss * loss
        return None

    def take_snapshot(self, epoch: int, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Remember the state at the end of ``epoch`` as the last good state.

        Tensors are copied into the previous snapshot's buffers where their shapes
        still match (no allocation, no ``deepcopy`` of the optimizers' Python
        structure); only new or reshaped tensors are cloned.
        """
        old = self.snapshot
        self.snapshot = Snapshot(
            epoch=epoch,
            model=_copy_into(model.state_dict(), old.model if old else None),
            optimizers={
                name: _copy_into(opt.state_dict(), old.optimizers.get(name) if old else None)
                for name, opt in optimizers.items()
            },
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
                # load_state_dict keeps references to the given tensors: hand it copies, so that
                # the next snapshot (which writes into its buffers) cannot change the optimizer
                opt.load_state_dict(_copy_into(self.snapshot.optimizers[name], None))
        self.rollbacks += 1
        return self.snapshot.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "rollbacks": self.rollbacks, "streak": self.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self._sum = sum(self.losses)
        self._sum_sq = sum(x * x for x in self.losses)
        self.rollbacks = state["rollbacks"]
        self.streak = state.get("streak", 0)  # absent in checkpoints of older builds


def _copy_into(state: Any, previous: Any) -> Any:
    """A copy of ``state`` (nested dicts/lists/tuples of tensors and plain values) that shares
    nothing with it, reusing ``previous`` (an earlier copy of the same structure) where it fits."""
    if isinstance(state, torch.Tensor):
        if isinstance(previous, torch.Tensor) and previous.shape == state.shape and previous.dtype == state.dtype:
            return previous.copy_(state.detach())
        return state.detach().clone()
    if isinstance(state, dict):
        prev = previous if isinstance(previous, dict) else {}
        return {k: _copy_into(v, prev.get(k)) for k, v in state.items()}
    if isinstance(state, list | tuple):
        prev = previous if isinstance(previous, list | tuple) and len(previous) == len(state) else [None] * len(state)
        return type(state)(_copy_into(v, p) for v, p in zip(state, prev, strict=True))
    return state


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
