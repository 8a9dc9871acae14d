"""Diagnostic profiles: names, what each archives, and the error for an unknown one."""

from __future__ import annotations

import pytest

from esper.leyline import MESSAGE_TYPES, LayerHealth, SeedTransition, TrainingSignals
from esper.nissa import MINIMAL, PROFILES, RESEARCH, STANDARD, get_profile


def test_the_three_profiles_are_known_by_name_in_any_case() -> None:
    assert list(PROFILES) == ["minimal", "standard", "research"]
    assert get_profile("minimal") is MINIMAL
    assert get_profile(" Research ") is RESEARCH


def test_unknown_profile_error_names_the_value_and_the_known_profiles() -> None:
    with pytest.raises(ValueError, match=r"field 'profile'.*'debug'.*known profiles: minimal, standard, research"):
        get_profile("debug")


def test_each_profile_archives_everything_the_lighter_one_does_and_more() -> None:
    archived = {p.name: {t for t in MESSAGE_TYPES if p.archives(t)} for p in PROFILES.values()}
    assert archived["minimal"] < archived["standard"] < archived["research"] == set(MESSAGE_TYPES)


def test_layer_health_and_epoch_lines_are_research_only() -> None:
    assert RESEARCH.archives_layer_health and not STANDARD.archives_layer_health and not MINIMAL.archives_layer_health
    assert RESEARCH.narrate_epochs and not STANDARD.narrate_epochs
    assert RESEARCH.slot_metrics and not STANDARD.slot_metrics


def test_minimal_keeps_the_lifecycle_but_not_per_epoch_signals_nor_a_narrative() -> None:
    assert MINIMAL.archives(SeedTransition.message_type)
    assert not MINIMAL.archives(TrainingSignals.message_type)
    assert not MINIMAL.narrative and STANDARD.narrative
    assert not STANDARD.archives(LayerHealth.message_type)
