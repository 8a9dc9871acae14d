"""Telemetry messages Tolaria publishes: per-epoch training signals, layer health, events."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from esper.leyline.message import Message, Record
from esper.leyline.stages import SeedStage

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Scalar = float | int | str | bool | None


class SeedStateReport(Record, frozen=True, kw_only=True):
    """One slot's state at the end of an epoch.

    ``contribution`` is the counterfactual: validation accuracy with the seed
    minus without it, on the same batches (fraction, positive helps).
    ``improvement`` is the drop in the seed's own training loss over its
    isolated phase.
    """

    slot_id: str
    stage: SeedStage
    seed_id: str | None = None
    blueprint: str | None = None
    alpha: float = 0.0
    epochs_in_stage: NonNegInt = 0
    params: NonNegInt = 0
    improvement: float | None = None
    contribution: float | None = None
    contribution_loss: float | None = None
    seed_grad_norm: float | None = None
    host_grad_norm: float | None = None
    embargo_epochs_left: NonNegInt = 0


class TrainingSignals(Message, frozen=True, kw_only=True):
    """Per-epoch training signals of one run (stream ``esper.telemetry.training``).

    Accuracies are fractions in [0, 1]; ``val_*`` come from the validation split
    carved from the training data, never from the test set.
    """

    message_type = "training_signals"

    epoch: NonNegInt
    step: NonNegInt = 0
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    loss_delta: float = 0.0
    accuracy_delta: float = 0.0
    plateau_epochs: NonNegInt = 0
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None
    learning_rate: float | None = None
    params_total: NonNegInt = 0
    epoch_seconds: float = 0.0
    seeds: list[SeedStateReport] = msgspec.field(default_factory=list)
    paused: bool = False


class LayerHealthReport(Record, frozen=True, kw_only=True):
    layer: str
    activation_mean: float = 0.0
    activation_variance: float = 0.0
    dead_ratio: float = 0.0
    grad_norm: float = 0.0
    latency_ms: float = 0.0
    error_count: NonNegInt = 0


class LayerHealth(Message, frozen=True, kw_only=True):
    """Per-layer health of one run at one epoch (stream ``esper.telemetry.health``).

    ``dead_ratio`` is the fraction of units that never activated in the sample.
    """

    message_type = "layer_health"

    epoch: NonNegInt
    layers: list[LayerHealthReport] = msgspec.field(default_factory=list)


class SeedTransition(Message, frozen=True, kw_only=True):
    """One lifecycle step of one slot, with why it happened and what was measured."""

    message_type = "seed_transition"

    epoch: NonNegInt
    slot_id: str
    from_stage: SeedStage
    to_stage: SeedStage
    reason: str
    seed_id: str | None = None
    blueprint: str | None = None
    metrics: dict[str, float] = msgspec.field(default_factory=dict)


class EventKind(StrEnum):
    """The kinds of :class:`TelemetryEvent` Esper's components publish."""

    #: Tolaria wrote the run's report; attributes carry its headline numbers.
    RUN_FINISHED = "run_finished"
    #: Tolaria could not run the job (the message says why).
    RUN_FAILED = "run_failed"
    #: the governor rolled the model back after a NaN or a loss spike.
    GOVERNOR_ROLLBACK = "governor_rollback"
    #: a seed could not be loaded from a compiled kernel and was built eagerly instead.
    KERNEL_FALLBACK = "kernel_fallback"


class TelemetryEvent(Message, frozen=True, kw_only=True):
    """A named event; ``kind`` is an :class:`EventKind` value for Esper's own events."""

    message_type = "telemetry_event"

    kind: str
    epoch: int | None = None
    slot_id: str | None = None
    message: str = ""
    attributes: dict[str, Scalar] = msgspec.field(default_factory=dict)
