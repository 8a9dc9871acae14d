"""Training jobs: what an operator submits and Tolaria runs (stream ``esper.control.jobs``).

:class:`TrainingJob` is the one definition of a run's settings: ``esper train``
builds one from its flags, the control API's request body is derived from its
fields, Tolaria trains exactly what it says and stores it in the run's
checkpoint. The envelope's ``run_id`` names the run; every later message of the
run carries it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from esper.leyline.message import Message

#: Tasks every Tolaria knows. Any other task names a factory in an installed module,
#: ``package.module:function`` (the function returns a Tolaria ``Task``).
BUILTIN_TASKS = ("mnist1d", "digits", "cifar10")
#: Learning-rate schedules (Tolaria's ``schedule`` module implements them).
LR_SCHEDULES = ("cosine", "constant", "anneal")
LrSchedule = Literal["cosine", "constant", "anneal"]
#: Arithmetic of a run's forward passes (Tolaria's ``precision`` module): float32 throughout, or bfloat16
#: autocast (weights, gradients and optimizer state stay float32).
PRECISIONS = ("fp32", "bf16")
Precision = Literal["fp32", "bf16"]

#: A task: a built-in name or ``package.module:function``.
TASK_PATTERN = r"^(mnist1d|digits|cifar10|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*)$"
_TASK = re.compile(TASK_PATTERN)

Epochs = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
Steps = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
WaitSteps = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
TaskName = Annotated[str, msgspec.Meta(max_length=200, pattern=TASK_PATTERN)]
Path = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Samples = Annotated[int, msgspec.Meta(ge=2, le=10**9)]
Channels = Annotated[int, msgspec.Meta(ge=1, le=4096)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
LearningRate = Annotated[float, msgspec.Meta(gt=0.0, le=10.0)]
Budget = Annotated[int, msgspec.Meta(ge=1, le=10**12)]
Sigma = Annotated[float, msgspec.Meta(gt=0.0, le=1_000.0)]
TimeoutMs = Annotated[int, msgspec.Meta(ge=0, le=3_600_000)]
WorldSize = Annotated[int, msgspec.Meta(ge=1, le=1024)]


def is_task_name(task: str) -> bool:
    """Whether ``task`` is a built-in task or a ``package.module:function`` reference."""
    return bool(_TASK.match(task))


class TrainingJob(Message, frozen=True, kw_only=True):
    """One training run: task, host size, budget, seed, schedule and the policy that steers it.

    ``policy`` names a policy Tamiyo knows (``"heuristic-per-slot"``, the
    default: the heuristic asked once per slot at each boundary;
    ``"heuristic"``: once per boundary; ``"none"`` for the static host). With
    ``lockstep`` (the default) Tolaria waits up to
    ``lockstep_timeout_ms`` after each epoch for Tamiyo's decision on it, so a
    run through the services makes exactly the decisions the same run makes in
    one process; without it Tolaria never waits and rejects a command decided
    on a slot state that has moved on. ``steps_per_epoch`` sets an epoch's
    length in training steps (an epoch is one round of decisions; default one
    pass over the training split): shorter epochs let seeds move through their
    lifecycle sooner; with ``lengthen_settled`` (the default) a round runs on
    to the end of the current pass while no seed is in flight and the policy
    waited (one round of decisions per pass then). ``host_wait_steps``: for up
    to that many steps from the start the host does not learn until every slot
    holds a seed in the forward (it waits for the seeds it will carry; 0, the
    default: it never waits). A seed learns jointly with the host from the
    start of its TRAINING stage, in the forward at full weight; with
    ``isolate_seeds`` on it trains isolated on detached host features until it
    blends in instead. Either way it passes the same gates, and culling it puts
    the host back as it was when the seed joined the forward unless the host as
    it is scores lower validation loss. ``precision`` ``"bf16"`` runs the
    forward passes (training and evaluation) under bfloat16 autocast, weights
    and optimizer state in float32; ``"fp32"`` (the default) runs float32 throughout.
    ``max_train_samples`` trims the training
    split (tests, quick demos); ``spike_sigma`` is the governor's loss-spike
    threshold in standard deviations. ``world_size`` processes train the run
    together with ``torch.distributed`` (data parallel: each takes a shard of
    every ``batch_size`` batch, so the run's arithmetic does not depend on it).
    """

    message_type = "training_job"

    task: TaskName = "mnist1d"
    policy: Name = "heuristic-per-slot"
    epochs: Epochs = 40
    steps_per_epoch: Steps | None = None
    lengthen_settled: bool = True
    host_wait_steps: WaitSteps = 0
    isolate_seeds: bool = False
    seed: Seed = 0
    data_dir: Path | None = None
    max_train_samples: Samples | None = None
    host_channels: Channels | None = None
    batch_size: BatchSize = 100
    lr: LearningRate = 1e-2
    lr_schedule: LrSchedule = "cosine"
    precision: Precision = "fp32"
    param_budget: Budget | None = None
    spike_sigma: Sigma = 6.0
    lockstep: bool = True
    lockstep_timeout_ms: TimeoutMs = 2_000
    world_size: WorldSize = 1
