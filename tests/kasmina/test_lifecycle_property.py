"""Property: random sequences of lifecycle operations never leave a slot where the transition table forbids."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.kasmina import KasminaConfig, MLPHost, MorphogeneticModel, wrap
from esper.kasmina.slot import HOOKED_STAGES, SEEDED_STAGES
from esper.leyline import GateThresholds, SeedStage, is_legal

SLOTS = ("a", "b")
metric = st.one_of(st.none(), st.floats(-1.0, 1.0), st.just(math.nan))
operation = st.one_of(
    st.tuples(st.just("germinate"), st.sampled_from((*SLOTS, "zz")), st.sampled_from(("mlp", "lowrank", "conv_light"))),
    st.tuples(st.just("advance"), st.sampled_from(SLOTS)),
    st.tuples(st.just("cull"), st.sampled_from(SLOTS)),
    st.tuples(st.just("end_epoch")),
    st.tuples(st.just("set_alpha"), st.sampled_from(SLOTS), st.floats(-0.5, 1.5)),
    st.tuples(st.just("record"), st.sampled_from(SLOTS), metric, metric, st.integers(0, 1)),
)


def _apply(model: MorphogeneticModel, op: tuple, epoch: int) -> None:
    kind = op[0]
    if kind == "germinate":
        model.germinate(op[1], op[2], epoch=epoch, reason="property")
    elif kind == "advance":
        model.advance(op[1], epoch=epoch, reason="property")
    elif kind == "cull":
        model.cull(op[1], epoch=epoch, reason="property")
    elif kind == "end_epoch":
        model.end_epoch(epoch)
    elif kind == "set_alpha":
        model.set_alpha(op[1], op[2], epoch=epoch, reason="property")
    else:
        slot_id, improvement, contribution, violations = op[1:]
        measured = {"improvement": improvement, "contribution": contribution, "seed_grad_norm": 1.0}
        model.record_metrics(slot_id, isolation_violations=violations, **measured)


def _state(model: MorphogeneticModel) -> list[tuple]:
    return [
        (s.stage, s.seed, s.seed_id, s.alpha, s.epochs_in_stage, s.embargo_left, s.hooked) for s in model.slots.values()
    ] + [len(model.events)]


def _check_invariants(model: MorphogeneticModel) -> None:
    last = dict.fromkeys(SLOTS, SeedStage.DORMANT)
    for event in model.events:
        assert is_legal(event.from_stage, event.to_stage), event
        assert event.from_stage is last[event.slot_id], "events chain stage to stage"
        last[event.slot_id] = event.to_stage
    for slot_id in SLOTS:
        slot = model.slot(slot_id)
        assert slot.stage is last[slot_id]
        assert (slot.seed is not None) == (slot.stage in SEEDED_STAGES)
        assert slot.hooked == (slot.stage in HOOKED_STAGES)
        assert 0.0 <= slot.alpha <= 1.0
        if slot.stage in (SeedStage.SHADOWING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED):
            assert slot.alpha == 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=40))
def test_random_operations_keep_every_slot_legal(ops: list[tuple]) -> None:
    config = KasminaConfig(
        thresholds=GateThresholds(min_training_epochs=1, min_shadowing_epochs=1, min_probation_epochs=0),
        blend_epochs=2,
        embargo_epochs=1,
    )
    model = wrap(MLPHost(4, 6, 2, depth=2), {"a": "body.act1", "b": "body.fc2"}, config=config)
    model.probe(torch.zeros(1, 4))
    x = torch.randn(3, 4)
    for epoch, op in enumerate(ops):
        before = _state(model)
        try:
            _apply(model, op, epoch)
        except ValueError:  # GateFailedError and IllegalTransitionError are ValueErrors
            assert _state(model) == before, f"a refused {op} changed the model"
        _check_invariants(model)
        assert model(x).shape == (3, 2)
