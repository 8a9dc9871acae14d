"""The gated lifecycle: every step through Leyline's table and gates, recorded; refusals change nothing."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from esper.kasmina import ConvHost1D, GateFailedError, KasminaConfig, MorphogeneticModel, wrap
from esper.kasmina.state import lifecycle_state, restore_lifecycle
from esper.leyline import IllegalTransitionError, SeedStage, SeedStateReport, is_legal


def _snapshot(model: MorphogeneticModel, slot_id: str) -> tuple:
    slot = model.slot(slot_id)
    seed_state = {k: v.clone() for k, v in slot.seed.state_dict().items()} if slot.seed is not None else None
    return (
        slot.stage,
        slot.seed,
        slot.seed_id,
        slot.alpha,
        slot.epochs_in_stage,
        slot.hooked,
        list(model.events),
        seed_state and sorted(seed_state),
    )


def test_a_seed_walks_the_whole_path_and_every_step_is_an_event(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.FOSSILIZED)
    stages = [(e.from_stage, e.to_stage) for e in conv_model.events]
    path = [
        SeedStage.DORMANT,
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    ]
    assert stages == list(itertools.pairwise(path))
    for event in conv_model.events:
        assert event.slot_id == "s1" and event.seed_id == "s1-0" and event.blueprint == "conv_light"
        assert event.reason and "alpha" in event.metrics
    assert conv_model.events[-1].reason.startswith("G5:")
    assert conv_model.events[-1].metrics["contribution"] == pytest.approx(0.02)


def test_failed_gate_raises_and_changes_nothing(conv_model) -> None:
    conv_model.germinate("s1", "conv_light", epoch=0, reason="test")
    conv_model.advance("s1", epoch=0, reason="test")
    before = _snapshot(conv_model, "s1")
    with pytest.raises(GateFailedError, match=r"^G2: seed improvement None is not a finite number") as info:
        conv_model.advance("s1", epoch=1, reason="too early")
    assert isinstance(info.value, ValueError) and info.value.slot_id == "s1"
    assert _snapshot(conv_model, "s1") == before
    conv_model.record_metrics("s1", improvement=-0.5)
    with pytest.raises(GateFailedError, match=r"G2: seed loss improvement -0\.5"):
        conv_model.advance("s1", epoch=1, reason="harmful")
    conv_model.record_metrics("s1", improvement=0.2, isolation_violations=1)
    with pytest.raises(GateFailedError, match="G2: isolation violated 1 times"):
        conv_model.advance("s1", epoch=1, reason="leaky")
    assert _snapshot(conv_model, "s1")[:6] == before[:6]


def test_gates_read_thresholds_from_config() -> None:
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS, config=KasminaConfig())
    model.probe(torch.randn(2, 40))
    model.germinate("s1", "conv_light", epoch=0, reason="test")
    model.advance("s1", epoch=0, reason="test")
    model.record_metrics("s1", improvement=0.1)
    with pytest.raises(GateFailedError, match="G2: trained 0 < 3 epochs"):
        model.advance("s1", epoch=0, reason="test")
    for epoch in range(3):
        model.end_epoch(epoch)
    assert model.advance("s1", epoch=3, reason="test").to_stage is SeedStage.BLENDING


@pytest.mark.parametrize("stage", [SeedStage.DORMANT, SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.FOSSILIZED])
def test_advance_without_a_forward_step_is_illegal_and_changes_nothing(stage, conv_model, drive_to) -> None:
    if stage is SeedStage.FOSSILIZED:
        drive_to(conv_model, "s2", stage)
    elif stage is not SeedStage.DORMANT:
        conv_model.germinate("s2", "conv_light", epoch=0, reason="test")
        conv_model.cull("s2", epoch=0, reason="test")
        if stage is SeedStage.EMBARGOED:
            conv_model.end_epoch(0)
    assert conv_model.slot("s2").stage is stage
    before = _snapshot(conv_model, "s2")
    with pytest.raises(IllegalTransitionError, match=f"slot 's2' is {stage.name}"):
        conv_model.advance("s2", epoch=5, reason="test")
    assert _snapshot(conv_model, "s2") == before


@pytest.mark.parametrize("stage", [SeedStage.DORMANT, SeedStage.FOSSILIZED, SeedStage.EMBARGOED])
def test_cull_where_the_table_forbids_it_raises_and_changes_nothing(stage, conv_model, drive_to) -> None:
    if stage is SeedStage.FOSSILIZED:
        drive_to(conv_model, "s1", stage)
    elif stage is SeedStage.EMBARGOED:
        conv_model.germinate("s1", "conv_light", epoch=0, reason="test")
        conv_model.cull("s1", epoch=0, reason="test")
        conv_model.end_epoch(0)
    before = _snapshot(conv_model, "s1")
    with pytest.raises(IllegalTransitionError, match=f"{stage.name} -> CULLED"):
        conv_model.cull("s1", epoch=9, reason="test")
    assert _snapshot(conv_model, "s1") == before


def test_germinate_is_guarded_by_g0(conv_model) -> None:
    with pytest.raises(GateFailedError, match=r"^G0: unknown slot: slot 'nope'"):
        conv_model.germinate("nope", "conv_light", epoch=0, reason="test")
    with pytest.raises(GateFailedError, match=r"^G0: unknown blueprint: slot 's1', blueprint 'conv_giant'"):
        conv_model.germinate("s1", "conv_giant", epoch=0, reason="test")
    with pytest.raises(ValueError, match="blueprint 'mlp' serves linear, sequence features"):
        conv_model.germinate("s1", "mlp", epoch=0, reason="test")
    with pytest.raises(ValueError, match="kernel_size=2"):
        conv_model.germinate("s1", "conv_light", {"kernel_size": 2}, epoch=0, reason="test")
    assert conv_model.events == [] and conv_model.slot("s1").stage is SeedStage.DORMANT
    conv_model.germinate("s1", "conv_light", epoch=0, reason="test")
    with pytest.raises(GateFailedError, match="G0: slot is GERMINATED, not DORMANT"):
        conv_model.germinate("s1", "conv_light", epoch=0, reason="again")
    assert len(conv_model.events) == 1


def test_germinate_before_probe_asks_for_a_probe() -> None:
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS)
    with pytest.raises(ValueError, match=r"call model.probe"):
        model.germinate("s1", "conv_light", epoch=0, reason="test")
    assert model.events == []


def test_cull_embargo_reset_timeline(conv_model) -> None:
    conv_model.germinate("s1", "depthwise", epoch=3, reason="test")
    conv_model.cull("s1", epoch=3, reason="no better")
    slot = conv_model.slot("s1")
    assert slot.stage is SeedStage.CULLED and slot.seed is None and conv_model.seed_parameters() == []
    stages = []
    for epoch in range(3, 7):
        made = conv_model.end_epoch(epoch)
        stages.append((slot.stage, [e.to_stage for e in made]))
    # embargo_epochs=2 in the fast config: closed for epochs 4 and 5, open again after end of epoch 5.
    assert stages == [
        (SeedStage.EMBARGOED, [SeedStage.EMBARGOED]),
        (SeedStage.EMBARGOED, []),
        (SeedStage.DORMANT, [SeedStage.RESETTING, SeedStage.DORMANT]),
        (SeedStage.DORMANT, []),
    ]
    assert slot.blueprint is None and slot.seed_id is None
    conv_model.germinate("s1", "conv_light", epoch=7, reason="again")
    assert slot.seed_id == "s1-1"
    assert all(is_legal(e.from_stage, e.to_stage) for e in conv_model.events)


def test_set_alpha_only_while_blending(conv_model, drive_to) -> None:
    conv_model.germinate("s1", "conv_light", epoch=0, reason="test")
    with pytest.raises(ValueError, match="slot 's1' is GERMINATED, alpha can be set only while BLENDING"):
        conv_model.set_alpha("s1", 0.5, epoch=0, reason="test")
    conv_model.cull("s1", epoch=0, reason="test")
    drive_to(conv_model, "s2", SeedStage.BLENDING)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        conv_model.set_alpha("s2", 1.5, epoch=0, reason="test")
    conv_model.set_alpha("s2", 0.4, epoch=0, reason="test")
    assert conv_model.slot("s2").alpha == 0.4


def test_counterfactual_contexts(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.BLENDING, blueprint="conv_heavy")
    conv_model.set_alpha("s1", 0.5, epoch=0, reason="test")
    x = torch.randn(6, 40)
    conv_model.slot("s1").remove_hook()
    host_only = conv_model.host(x)
    conv_model.slot("s1").sync_hook()
    blended = conv_model(x)
    with conv_model.seed_disabled("s1"):
        assert torch.equal(conv_model(x), host_only)
    with conv_model.alpha_override("s1", 1.0):
        full = conv_model(x)
        with conv_model.seed_disabled("s1"):
            assert torch.equal(conv_model(x), host_only)
        assert torch.equal(conv_model(x), full)
    assert torch.equal(conv_model(x), blended)
    assert not torch.allclose(full, blended) and not torch.allclose(full, host_only)
    with pytest.raises(ValueError, match="slot 's2' is DORMANT and has no seed"):
        with conv_model.alpha_override("s2", 1.0):
            pass


def test_alpha_override_measures_a_training_seed_at_full_strength(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.TRAINING)
    x = torch.randn(6, 40)
    plain = conv_model(x)
    with conv_model.alpha_override("s1", 1.0):
        with_seed = conv_model(x)
    assert not torch.allclose(plain, with_seed)
    assert torch.equal(conv_model(x), plain)


def test_parameters_and_reports(conv_model, drive_to) -> None:
    host_params = sum(p.numel() for p in conv_model.host.parameters())
    assert host_params == 858 and conv_model.param_count() == 858
    drive_to(conv_model, "s1", SeedStage.FOSSILIZED)
    drive_to(conv_model, "s2", SeedStage.TRAINING, blueprint="se_attention")
    s1 = conv_model.slot("s1").seed_param_count()
    s2 = conv_model.slot("s2").seed_param_count()
    assert conv_model.param_count() == 858 + s1 + s2
    assert sum(p.numel() for p in conv_model.host_parameters()) == 858 + s1
    assert sum(p.numel() for p in conv_model.seed_parameters()) == s2
    assert conv_model.seed_parameters("s1") == [] and conv_model.seed_parameters("s3") == []
    reports = conv_model.reports()
    assert [r.slot_id for r in reports] == ["s1", "s2", "s3"]
    assert all(isinstance(r, SeedStateReport) for r in reports)
    assert reports[1].stage is SeedStage.TRAINING and reports[1].params == s2 and reports[1].blueprint == "se_attention"
    assert reports[1].improvement == pytest.approx(0.1)
    assert reports[2].stage is SeedStage.DORMANT and reports[2].params == 0


def test_record_metrics_keeps_unmeasured_values_and_adds_violations(conv_model) -> None:
    conv_model.record_metrics("s1", improvement=0.3, isolation_violations=2)
    conv_model.record_metrics("s1", contribution=0.01, isolation_violations=1)
    m = conv_model.slot("s1").metrics
    assert (m.improvement, m.contribution, m.isolation_violations) == (0.3, 0.01, 3)
    with pytest.raises(ValueError, match="isolation_violations=-1"):
        conv_model.record_metrics("s1", isolation_violations=-1)
    with pytest.raises(ValueError, match="unknown slot 'x'"):
        conv_model.record_metrics("x", improvement=0.1)


def test_lifecycle_state_is_json_and_restores_for_load_state_dict(conv_model, drive_to, fast_config) -> None:
    drive_to(conv_model, "s1", SeedStage.FOSSILIZED, blueprint="bottleneck")
    drive_to(conv_model, "s2", SeedStage.BLENDING, blueprint="conv_heavy")
    conv_model.set_alpha("s2", 0.25, epoch=4, reason="test")
    conv_model.germinate("s3", "norm", {"groups": 2}, epoch=4, reason="test")
    conv_model.cull("s3", epoch=4, reason="test")
    state = json.loads(json.dumps(lifecycle_state(conv_model)))
    weights = conv_model.state_dict()
    restored = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS, config=fast_config)
    restore_lifecycle(restored, state)
    restored.load_state_dict(weights)
    x = torch.randn(5, 40)
    assert torch.equal(restored(x), conv_model(x))
    assert restored.events == conv_model.events
    assert restored.reports() == conv_model.reports()
    assert lifecycle_state(restored) == state
    restored.end_epoch(5)
    conv_model.end_epoch(5)
    assert restored.slot("s2").alpha == conv_model.slot("s2").alpha


def test_restore_rejects_a_state_for_other_slots(conv_model) -> None:
    state = lifecycle_state(conv_model)
    other = wrap(ConvHost1D(), {"a": "act1"})
    with pytest.raises(ValueError, match=r"slots \['s1', 's2', 's3'\] do not match the model's slots \['a'\]"):
        restore_lifecycle(other, state)


def test_an_event_states_the_gate_verdict_and_the_callers_reason_once(conv_model) -> None:
    germinated = conv_model.germinate("s1", "conv_light", epoch=0, reason="plateau for 3 epochs")
    assert germinated.reason == "G0: slot and blueprint valid; plateau for 3 epochs"
    trained = conv_model.advance("s1", epoch=1, reason="advance GERMINATED: G1: seed germinated")
    assert trained.reason == "advance GERMINATED: G1: seed germinated"
