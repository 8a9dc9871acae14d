"""The trainer's configuration, its per-epoch record, and seeding for reproducible runs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from esper.tolaria.governor import GovernorConfig
from esper.tolaria.schedule import check_schedule


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """Training hyper-parameters. ``seed`` makes a run reproducible; ``epochs`` is the planned length."""

    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-2
    seed_lr: float | None = None
    lr_schedule: str = "cosine"
    grad_clip: float = 5.0
    seed: int = 0
    eval_batch_size: int = 1000
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    #: TRAINING seeds learn from one extra forward/backward at alpha 1 per step (else the straight-through
    #: gradient alone, which does not see the seed's own output)
    isolated_seed_pass: bool = True
    #: a fossilized seed's parameters (and Adam state) join the host optimizer at the next epoch
    merge_fossilized: bool = True
    #: a run folder rewrites its checkpoint every this many epochs (and always after the last one)
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"field {name!r}: must be >= 1 (value {getattr(self, name)!r})")
        for name in ("lr", "grad_clip"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"field {name!r}: must be a finite number > 0 (value {getattr(self, name)!r})")
        check_schedule(self.lr_schedule)


@dataclass(slots=True)
class EpochRecord:
    """One epoch as the report sees it (the only place test numbers live)."""

    epoch: int
    step: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    lr: float
    params: int
    modes: dict[str, int]
    stages: dict[str, int]
    rolled_back: bool
    epoch_seconds: float


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
