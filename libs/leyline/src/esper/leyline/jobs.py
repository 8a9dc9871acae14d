"""Training jobs: what an operator submits and Tolaria runs (stream ``esper.control.jobs``).

The envelope's ``run_id`` names the run; every later message of the run carries it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from esper.leyline.message import Message

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]


class TrainingJob(Message, frozen=True, kw_only=True):
    """One training run: task, host size, budget, seed and the policy that steers it.

    ``policy`` is ``"heuristic"`` or ``"none"`` (the static host). With
    ``lockstep`` Tolaria waits up to ``lockstep_timeout_ms`` after each epoch for
    Tamiyo's decision on it, which makes service runs reproducible.
    ``max_train_samples`` trims the training split (tests, quick demos).
    """

    message_type = "training_job"

    task: str = "mnist1d"
    policy: str = "heuristic"
    epochs: PositiveInt = 40
    seed: int = 0
    data_dir: str | None = None
    max_train_samples: PositiveInt | None = None
    host_channels: PositiveInt | None = None
    batch_size: PositiveInt = 100
    lr: PositiveFloat = 1e-2
    lr_schedule: str = "cosine"
    param_budget: PositiveInt | None = None
    lockstep: bool = False
    lockstep_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 2_000
