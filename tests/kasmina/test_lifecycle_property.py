"""Property: random sequences of lifecycle operations never leave a slot where the transition table forbids."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from esper.kasmina import KasminaConfig, MLPHost, MorphogeneticModel, wrap
from esper.leyline import HOOKED_STAGES, SEEDED_STAGES, GateThresholds, SeedStage, is_legal

SLOTS = ("a", "b")
metric = st.one_of(st.floats(-0.2, 1.0), st.floats(0.01, 1.0), st.none(), st.just(math.nan))
germinate = st.tuples(
    st.just("germinate"), st.sampled_from((*SLOTS, "zz")), st.sampled_from(("mlp", "lowrank", "norm", "conv_light"))
)
advance = st.tuples(st.just("advance"), st.sampled_from(SLOTS))
end_epoch = st.tuples(st.just("end_epoch"))
record = st.tuples(st.just("record"), st.sampled_from(SLOTS), metric, metric, st.sampled_from((0,) * 15 + (1,)))
# Weighted towards advancing so that runs reach the late stages, not only germinate and cull.
operation = st.one_of(
    germinate,
    germinate,
    advance,
    advance,
    advance,
    record,
    record,
    end_epoch,
    end_epoch,
    st.tuples(st.just("cull"), st.sampled_from(SLOTS)),
    st.tuples(st.just("set_alpha"), st.sampled_from(SLOTS), st.floats(-0.5, 1.5)),
    st.tuples(st.just("push"), st.sampled_from(SLOTS)),
    st.tuples(st.just("push"), st.sampled_from(SLOTS)),
)


def _expand(ops: list[tuple]) -> list[tuple]:
    """A "push" is good metrics, an epoch boundary and an advance: the moves that grow a seed."""
    out: list[tuple] = []
    for op in ops:
        if op[0] == "push":
            out += [("record", op[1], 0.5, 0.5, 0), ("end_epoch",), ("advance", op[1])]
        else:
            out.append(op)
    return out


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
    for step in model.events:
        assert is_legal(step.from_stage, step.to_stage), step
        assert step.from_stage is last[step.slot_id], "events chain stage to stage"
        last[step.slot_id] = step.to_stage
    for slot_id in SLOTS:
        slot = model.slot(slot_id)
        assert slot.stage is last[slot_id]
        assert (slot.seed is not None) == (slot.stage in SEEDED_STAGES)
        assert slot.hooked == (slot.stage in HOOKED_STAGES)
        assert 0.0 <= slot.alpha <= 1.0
        if slot.stage in (SeedStage.SHADOWING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED):
            assert slot.alpha == 1.0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=20, max_size=60))
def test_random_operations_keep_every_slot_legal(ops: list[tuple]) -> None:
    config = KasminaConfig(
        thresholds=GateThresholds(min_training_epochs=1, min_shadowing_epochs=1, min_probation_epochs=0),
        blend_epochs=2,
        embargo_epochs=1,
    )
    model = wrap(MLPHost(4, 6, 2, depth=2), {"a": "body.act1", "b": "body.fc2"}, config=config)
    model.probe(torch.zeros(1, 4))
    x = torch.randn(3, 4)
    for epoch, op in enumerate(_expand(ops)):
        before = _state(model)
        try:
            _apply(model, op, epoch)
        except ValueError:  # GateFailedError and IllegalTransitionError are ValueErrors
            assert _state(model) == before, f"a refused {op} changed the model"
        _check_invariants(model)
        assert model(x).shape == (3, 2)
    for slot in model.slots.values():
        event(f"slot ended {slot.stage.name}")
    deepest = max((e.to_stage for e in model.events if e.to_stage <= SeedStage.FOSSILIZED), default=SeedStage.DORMANT)
    event(f"deepest stage {SeedStage(deepest).name}")
