"""The trainer's configuration, its per-epoch record, and seeding for reproducible runs."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from esper.tolaria.device import check_device, configured_device
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.precision import check_precision
from esper.tolaria.schedule import check_schedule

#: How a new seed is initialized (see TrainerConfig.seed_init).
SEED_INITS = ("gradmax", "zero")


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
    #: where the run trains (``esper.tolaria.device``): "auto" (CUDA when available, else the CPU), "cpu",
    #: "cuda" or "cuda:N"; the model, its seeds and the task's splits live there. Default: the process's
    #: (``ESPER_DEVICE``, else "auto")
    device: str = field(default_factory=configured_device)
    #: "fp32", or "bf16": the forward passes under bfloat16 autocast, weights and optimizer state in float32
    #: (``esper.tolaria.precision``)
    precision: str = "fp32"
    governor: GovernorConfig = field(default_factory=GovernorConfig)
    #: TRAINING seeds learn from one extra forward/backward at alpha 1 per step (else the straight-through
    #: gradient alone, which does not see the seed's own output)
    isolated_seed_pass: bool = True
    #: "gradmax": a GERMINATED seed's first layer is set from the host's gradient (its last layer stays zero);
    #: "zero": the blueprint's own initialization (random first layer, zero last layer)
    seed_init: str = "gradmax"
    #: a fossilized seed's parameters (and Adam state) join the host optimizer at the next epoch
    merge_fossilized: bool = True
    #: a run folder rewrites its checkpoint every this many epochs (and always after the last one)
    checkpoint_every: int = 1
    #: layer health (a forward over 256 validation rows, per-layer statistics) is measured and published every
    #: this many epochs and at the first; in between the policy is handed the newest one. None: about once per
    #: pass over the training split (every epoch with the default epoch length)
    health_every: int | None = None
    #: the test split (for the record only) is evaluated every this many epochs, at the first and at the last;
    #: None: about once per pass over the training split (every epoch with the default epoch length)
    test_every: int | None = None
    #: training steps per epoch (one epoch = one round of decisions); None: one pass over the training split.
    #: Batches continue through a shuffled pass across epochs, so the data order does not depend on it.
    steps_per_epoch: int | None = None
    #: with ``steps_per_epoch``: while the network is settled (every slot DORMANT or FOSSILIZED) and the last
    #: boundary applied no slot command, the next boundary comes at the end of the epoch in which the current
    #: pass over the training split ends, several epochs on (one round of decisions per pass, as with whole-pass
    #: epochs); any seed in flight, or a command at the last boundary, brings back a boundary after every epoch.
    #: False: a boundary after every epoch throughout.
    lengthen_settled: bool = True
    #: for up to this many steps from the start of the run the host does not learn (its learning rate is 0)
    #: until every slot holds a seed in the forward (BLENDING or later): the host waits for the seeds it will
    #: carry instead of learning ahead of them, while seeds are still isolated and unproven. The seeds learn
    #: at the schedule's rate. 0: the host never waits
    host_wait_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "test_every", "health_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"field {name!r}: must be >= 1 (value {getattr(self, name)!r})")
        if self.host_wait_steps < 0:
            raise ValueError(f"field 'host_wait_steps': must be >= 0 (value {self.host_wait_steps!r})")
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"field {name!r}: must be >= 1 (value {getattr(self, name)!r})")
        for name in ("lr", "grad_clip"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"field {name!r}: must be a finite number > 0 (value {getattr(self, name)!r})")
        check_schedule(self.lr_schedule)
        check_device(self.device)
        check_precision(self.precision)
        if self.seed_init not in SEED_INITS:
            raise ValueError(f"field 'seed_init': must be one of {', '.join(SEED_INITS)} (value {self.seed_init!r})")


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
    #: epochs this record's round of training covered (more than 1 only while the network was settled)
    span: int = 1


def reaches_multiple(epoch: int, span: int, every: int) -> bool:
    """Whether the round of ``span`` epochs that ends at ``epoch`` reached a multiple of ``every`` (per-N-epochs
    work is due then: a round may span several epochs, see ``TrainerConfig.lengthen_settled``)."""
    return epoch // every > (epoch - span) // every


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
