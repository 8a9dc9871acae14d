"""Rejection reasons become a short, bounded set of label values."""

from __future__ import annotations

import pytest

from esper.nissa import ReasonCategories


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("embargo: slot s1 was culled 2 epochs ago", "embargo"),
        ("G2 failed: loss did not improve (0.51 -> 0.52)", "g2_failed"),
        ("Max Seeds: 3 active", "max_seeds"),
        ("slot s1 is in cooldown for 3 more epochs", "cooldown"),
        ("illegal transition TRAINING -> FOSSILIZED", "illegal_transition"),
        ("too many active seeds (4 > 3)", "budget"),
        ("confidence 0.31 below 0.5", "low_confidence"),
        ("loss is NaN", "unstable"),
        ("slot s2 is occupied", "slot_busy"),
        ("the moon is wrong", "other"),
        ("", "unspecified"),
        (None, "unspecified"),
    ],
)
def test_reason_is_folded_to_its_category(reason: str | None, category: str) -> None:
    assert ReasonCategories().categorize(reason) == category


def test_numbers_and_ids_in_the_details_do_not_make_new_categories() -> None:
    categories = ReasonCategories()
    labels = {categories.categorize(f"embargo: slot s{i} culled {i} epochs ago") for i in range(50)}
    assert labels == {"embargo"}


def test_categories_beyond_the_cap_become_other() -> None:
    categories = ReasonCategories(max_categories=3)
    labels = [categories.categorize(f"kind{i}: details") for i in range(6)]
    assert labels == ["kind0", "kind1", "kind2", "other", "other", "other"]
    assert categories.categorize("kind1: again") == "kind1"


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"field 'max_categories'.*0"):
        ReasonCategories(max_categories=0)
