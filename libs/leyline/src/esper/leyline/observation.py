"""The observation schema: a semantic name for every index of the policy's feature vector.

The vector is laid out as the global features, then loss and accuracy
histories (most recent last), then ``OBSERVATION_SLOTS`` blocks of per-slot
features with the stage one-hot encoded. :data:`FEATURE_NAMES` is derived from
the NamedTuples below, so the size can never drift from what is written.

Hot path: build :class:`GlobalFeatures` and :class:`SlotFeatures` (NamedTuples)
and call :func:`write_observation` into a preallocated numpy or torch buffer.
Reports (for logs, tests, the control API) are slotted dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from esper.leyline.stages import SeedStage

#: Length of the loss and accuracy histories in the observation.
HISTORY_LENGTH = 5
#: Slots the observation has room for; hosts with fewer slots leave blocks zeroed.
OBSERVATION_SLOTS = 3


class GlobalFeatures(NamedTuple):
    """Run-level features of one epoch. Accuracies are fractions, ``epoch`` is normalized
    by the run's planned length (0 at the start, 1 at the end)."""

    epoch_progress: float
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    loss_delta: float
    accuracy_delta: float
    plateau_epochs: float
    best_val_accuracy: float
    params_ratio: float
    active_seeds: float
    signals_sanitized: float


class SlotFeatures(NamedTuple):
    """Per-slot features; ``stage`` is written one-hot over :class:`SeedStage`."""

    stage: SeedStage
    alpha: float
    epochs_in_stage: float
    improvement: float
    contribution: float
    params_ratio: float
    embargo_epochs_left: float


_STAGE_NAMES = tuple(f"stage_{stage.name.lower()}" for stage in SeedStage)
_SLOT_NAMES = tuple(name for f in SlotFeatures._fields for name in (_STAGE_NAMES if f == "stage" else (f,)))
SLOT_FEATURE_SIZE = len(_SLOT_NAMES)

FEATURE_NAMES: tuple[str, ...] = (
    GlobalFeatures._fields
    + tuple(f"loss_history_{i}" for i in range(HISTORY_LENGTH))
    + tuple(f"accuracy_history_{i}" for i in range(HISTORY_LENGTH))
    + tuple(f"slot{s}_{name}" for s in range(OBSERVATION_SLOTS) for name in _SLOT_NAMES)
)
OBSERVATION_SIZE = len(FEATURE_NAMES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
_SLOTS_OFFSET = len(GlobalFeatures._fields) + 2 * HISTORY_LENGTH
_N_STAGES = len(SeedStage)


def feature_index(name: str) -> int:
    """Index of a named feature; KeyError naming the feature when there is none."""
    try:
        return FEATURE_INDEX[name]
    except KeyError:
        raise KeyError(f"no observation feature named {name!r}") from None


def slot_offset(slot: int) -> int:
    """Index where the block of slot number ``slot`` starts."""
    if not 0 <= slot < OBSERVATION_SLOTS:
        raise IndexError(f"slot number {slot} outside 0..{OBSERVATION_SLOTS - 1}")
    return _SLOTS_OFFSET + slot * SLOT_FEATURE_SIZE


def _padded(history: Sequence[float]) -> list[float]:
    recent = list(history)[-HISTORY_LENGTH:]
    return [recent[0] if recent else 0.0] * (HISTORY_LENGTH - len(recent)) + recent


def write_observation(
    buffer: Any,
    global_features: GlobalFeatures,
    loss_history: Sequence[float],
    accuracy_history: Sequence[float],
    slots: Sequence[SlotFeatures],
    offset: int = 0,
) -> int:
    """Write one observation into ``buffer[offset : offset + OBSERVATION_SIZE]``.

    ``buffer`` is a 1-D numpy array or torch tensor (any float dtype); histories
    shorter than ``HISTORY_LENGTH`` are left-padded with their oldest value, and
    slot blocks past ``len(slots)`` are zeroed. Returns the offset after the write.
    """
    if len(slots) > OBSERVATION_SLOTS:
        raise ValueError(f"{len(slots)} slots exceed the observation's {OBSERVATION_SLOTS}")
    end = offset + OBSERVATION_SIZE
    values: list[float] = list(global_features)
    values += _padded(loss_history)
    values += _padded(accuracy_history)
    for slot in slots:
        one_hot = [0.0] * _N_STAGES
        one_hot[int(slot.stage)] = 1.0
        values += one_hot
        values += slot[1:]
    values += [0.0] * (OBSERVATION_SIZE - len(values))
    buffer[offset:end] = values if not hasattr(buffer, "new_tensor") else buffer.new_tensor(values)
    return end


@dataclass(slots=True)
class SlotReport:
    """A readable per-slot view (logs, API, tests)."""

    slot_id: str
    stage: SeedStage
    blueprint: str | None = None
    alpha: float = 0.0
    epochs_in_stage: int = 0
    improvement: float | None = None
    contribution: float | None = None
    params: int = 0


@dataclass(slots=True)
class ObservationReport:
    """A readable view of one observation: the numbers a policy decided on."""

    epoch: int
    features: dict[str, float] = field(default_factory=dict)
    slots: list[SlotReport] = field(default_factory=list)

    @classmethod
    def from_vector(cls, epoch: int, vector: Sequence[float]) -> ObservationReport:
        if len(vector) != OBSERVATION_SIZE:
            raise ValueError(f"observation has {len(vector)} values, schema has {OBSERVATION_SIZE}")
        return cls(epoch=epoch, features={n: float(v) for n, v in zip(FEATURE_NAMES, vector, strict=True)})
