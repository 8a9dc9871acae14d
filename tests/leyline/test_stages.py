"""The transition table: one place, and the paths it allows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.leyline import TRANSITIONS, IllegalTransitionError, SeedStage, check_transition, is_legal
from esper.leyline.stages import next_stage

STAGES = list(SeedStage)


def reachable(start: SeedStage, avoiding: frozenset[SeedStage] = frozenset()) -> set[SeedStage]:
    seen: set[SeedStage] = set()
    frontier = [start]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen and nxt not in avoiding:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_every_stage_has_a_row() -> None:
    assert set(TRANSITIONS) == set(SeedStage)


def test_no_path_out_of_fossilized() -> None:
    assert reachable(SeedStage.FOSSILIZED) == set()


def test_culled_reaches_dormant_only_through_embargoed_then_resetting() -> None:
    assert SeedStage.DORMANT in reachable(SeedStage.CULLED)
    assert SeedStage.DORMANT not in reachable(SeedStage.CULLED, avoiding=frozenset({SeedStage.EMBARGOED}))
    assert SeedStage.DORMANT not in reachable(SeedStage.CULLED, avoiding=frozenset({SeedStage.RESETTING}))
    assert SeedStage.RESETTING not in reachable(SeedStage.CULLED, avoiding=frozenset({SeedStage.EMBARGOED}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(STAGES), max_size=30))
def test_random_walks_from_culled_pass_embargo_and_reset_before_dormant(steps: list[SeedStage]) -> None:
    stage, visited = SeedStage.CULLED, [SeedStage.CULLED]
    for target in steps:
        if is_legal(stage, target):
            stage = target
            visited.append(stage)
            if stage is SeedStage.DORMANT:
                break
    if SeedStage.DORMANT in visited:
        i = visited.index(SeedStage.DORMANT)
        assert visited[i - 2 : i] == [SeedStage.EMBARGOED, SeedStage.RESETTING]


@pytest.mark.parametrize(
    "stage",
    [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY],
)
def test_every_live_stage_can_be_culled(stage: SeedStage) -> None:
    assert is_legal(stage, SeedStage.CULLED)


def test_forward_path_is_the_documented_lifecycle() -> None:
    path, stage = [SeedStage.DORMANT], SeedStage.DORMANT
    while (nxt := next_stage(stage)) is not None:
        path.append(nxt)
        stage = nxt
    assert path == [
        SeedStage.DORMANT,
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    ]


def test_illegal_transition_error_names_both_stages_and_slot() -> None:
    with pytest.raises(IllegalTransitionError) as err:
        check_transition(SeedStage.DORMANT, SeedStage.BLENDING, slot_id="s2")
    text = str(err.value)
    assert "DORMANT" in text and "BLENDING" in text and "'s2'" in text
    assert err.value.current is SeedStage.DORMANT and err.value.target is SeedStage.BLENDING


def test_dormant_cannot_be_culled() -> None:
    with pytest.raises(IllegalTransitionError):
        check_transition(SeedStage.DORMANT, SeedStage.CULLED)
