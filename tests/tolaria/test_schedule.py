"""Learning-rate schedules: the factor each step's rate is multiplied by."""

from __future__ import annotations

import pytest

from esper.tolaria.schedule import ANNEAL_FRACTION, LR_SCHEDULES, check_schedule, lr_factor


def test_constant_never_changes() -> None:
    assert {lr_factor("constant", s, 100) for s in range(0, 101, 10)} == {1.0}


def test_cosine_falls_from_one_to_zero() -> None:
    values = [lr_factor("cosine", s, 100) for s in range(101)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0)
    assert values == sorted(values, reverse=True)


def test_anneal_holds_the_rate_then_decays_only_in_its_tail() -> None:
    start = round(100 * (1 - ANNEAL_FRACTION))
    assert {lr_factor("anneal", s, 100) for s in range(start + 1)} == {1.0}
    tail = [lr_factor("anneal", s, 100) for s in range(start, 101)]
    assert tail == sorted(tail, reverse=True) and tail[-1] == pytest.approx(0.0)
    assert lr_factor("anneal", 500, 100) == pytest.approx(0.0)  # past the planned end: stays at the end


def test_unknown_schedule_names_field_and_value() -> None:
    assert set(LR_SCHEDULES) == {"cosine", "constant", "anneal"}
    with pytest.raises(ValueError, match=r"lr_schedule.*'linear'"):
        check_schedule("linear")
