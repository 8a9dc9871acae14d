"""The observation schema: names for every index, size derived from the names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esper.leyline import FEATURE_NAMES, OBSERVATION_SIZE, GlobalFeatures, SeedStage, SlotFeatures, feature_index
from esper.leyline.observation import (
    HISTORY_LENGTH,
    OBSERVATION_SLOTS,
    SLOT_FEATURE_SIZE,
    ObservationReport,
    slot_offset,
    write_observation,
)

GLOBAL = GlobalFeatures(*[float(i + 1) for i in range(len(GlobalFeatures._fields))])


def slot(stage: SeedStage, alpha: float) -> SlotFeatures:
    return SlotFeatures(stage, alpha, 2.0, 0.1, 0.05, 0.3, 0.0)


def test_names_are_unique_and_size_follows_them() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == OBSERVATION_SIZE
    expected = len(GlobalFeatures._fields) + 2 * HISTORY_LENGTH + OBSERVATION_SLOTS * SLOT_FEATURE_SIZE
    assert OBSERVATION_SIZE == expected


@pytest.mark.parametrize("make", [lambda n: np.zeros(n, dtype=np.float32), lambda n: torch.zeros(n)])
def test_written_values_land_at_their_named_indices(make) -> None:  # type: ignore[no-untyped-def]
    buffer = make(OBSERVATION_SIZE * 3)
    offset = OBSERVATION_SIZE
    end = write_observation(buffer, GLOBAL, [0.9, 0.8], [0.5], [slot(SeedStage.BLENDING, 0.25)], offset=offset)
    assert end == 2 * OBSERVATION_SIZE
    view = buffer[offset:end]
    assert float(view[feature_index("val_loss")]) == GLOBAL.val_loss
    assert float(view[feature_index("signals_sanitized")]) == GLOBAL.signals_sanitized
    assert float(view[feature_index(f"loss_history_{HISTORY_LENGTH - 1}")]) == pytest.approx(0.8)
    assert float(view[feature_index("loss_history_0")]) == pytest.approx(0.9)  # left-padded with the oldest
    assert float(view[feature_index("slot0_stage_blending")]) == 1.0
    assert float(view[feature_index("slot0_stage_training")]) == 0.0
    assert float(view[feature_index("slot0_alpha")]) == 0.25
    assert float(view[slot_offset(1) : slot_offset(2)].sum()) == 0.0  # absent slots stay zero
    assert float(buffer[:offset].sum()) == 0.0 and float(buffer[end:].sum()) == 0.0


def test_too_many_slots_is_an_error() -> None:
    with pytest.raises(ValueError, match="slots"):
        write_observation(np.zeros(OBSERVATION_SIZE), GLOBAL, [], [], [slot(SeedStage.DORMANT, 0)] * 4)


def test_unknown_feature_name_is_named() -> None:
    with pytest.raises(KeyError, match="no_such_feature"):
        feature_index("no_such_feature")


def test_report_names_every_value() -> None:
    vector = np.arange(OBSERVATION_SIZE, dtype=np.float64)
    report = ObservationReport.from_vector(7, vector)
    assert report.features["val_loss"] == feature_index("val_loss")
    with pytest.raises(ValueError):
        ObservationReport.from_vector(7, vector[:-1])
