"""Gradient isolation while TRAINING, alpha blending while BLENDING, and the isolation monitor."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch

from esper.kasmina import ConvHost1D, GradientIsolationMonitor, KasminaConfig, SeedSlot, alpha_progress, wrap
from esper.leyline import SeedStage


def _host_grads(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(x), y).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("blueprint", ["conv_light", "conv_heavy", "se_attention", "bottleneck"])
def test_training_seed_gives_the_host_exactly_the_bare_host_gradients(blueprint, conv_model, drive_to) -> None:
    bare = copy.deepcopy(conv_model.host)
    for slot_id in ("s1", "s2", "s3"):
        drive_to(conv_model, slot_id, SeedStage.TRAINING, blueprint=blueprint)
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    expected = _host_grads(bare, x, y)
    got = _host_grads(conv_model.host, x, y)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    for slot_id in ("s1", "s2", "s3"):
        grads = [p.grad for p in conv_model.seed_parameters(slot_id)]
        assert all(g is not None for g in grads)
        assert sum(float(g.norm()) for g in grads) > 0, "the seed must learn from the downstream loss"


def test_monitor_reports_no_violation_and_a_positive_seed_gradient(conv_model, drive_to) -> None:
    drive_to(conv_model, "s2", SeedStage.TRAINING, blueprint="conv_heavy")
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    with GradientIsolationMonitor(conv_model) as monitor:
        for _ in range(3):
            conv_model.zero_grad()
            torch.nn.functional.cross_entropy(conv_model(x), y).backward()
    assert monitor.violations == 0
    assert monitor.passes == 3
    assert monitor.seed_grad_norm > 0 and monitor.seed_grad_norms["s2"] == pytest.approx(monitor.seed_grad_norm)
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in conv_model.host.parameters()))
    assert monitor.host_grad_norm == pytest.approx(expected, rel=1e-5)


def test_monitor_catches_a_seed_that_reads_undetached_features(conv_model, drive_to, monkeypatch) -> None:
    drive_to(conv_model, "s1", SeedStage.TRAINING)
    # Simulate the bug isolation guards against: the seed reading the live host features.
    monkeypatch.setattr(SeedSlot, "_seed_input", lambda self, h: h)
    x = torch.randn(8, 40)
    bare = copy.deepcopy(conv_model.host)
    with GradientIsolationMonitor(conv_model) as monitor:
        conv_model(x).sum().backward()
    assert monitor.violations == 1
    bare(x).sum().backward()
    leaked = conv_model.host.conv1.weight.grad
    assert not torch.equal(leaked, bare.conv1.weight.grad), "the leak reaches the host"


def test_monitor_removes_its_hooks_on_exit(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.TRAINING)
    params = list(conv_model.parameters())
    seed = conv_model.slot("s1").seed
    with GradientIsolationMonitor(conv_model) as monitor:
        assert any(p._backward_hooks for p in params)
        assert seed._forward_pre_hooks
    assert not any(p._backward_hooks for p in params)
    assert not seed._forward_pre_hooks
    conv_model(torch.randn(4, 40)).sum().backward()
    assert monitor.passes == 0


def test_blending_output_is_the_alpha_mix(conv_model, drive_to) -> None:
    drive_to(conv_model, "s3", SeedStage.BLENDING, blueprint="conv_light")
    slot = conv_model.slot("s3")
    conv_model.set_alpha("s3", 0.3, epoch=0, reason="test")
    h = torch.randn(5, *slot.feature_shape)
    expected = 0.3 * slot.seed(h) + 0.7 * h
    assert torch.allclose(slot(h), expected, atol=1e-6)
    # BLENDING lets the host learn through the seed as well.
    h.requires_grad_(True)
    slot(h).sum().backward()
    assert h.grad is not None


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_alpha_follows_the_schedule_over_the_tempo(schedule: str, drive_to) -> None:
    from esper.leyline import GateThresholds

    thresholds = GateThresholds(min_training_epochs=0)  # an isolated seed's ramp (a joint one starts at 1)
    config = KasminaConfig(thresholds=thresholds, blend_epochs=4, alpha_schedule=schedule, isolate_seeds=True)
    model = wrap(ConvHost1D(), ConvHost1D.DEFAULT_SLOTS, config=config)
    model.probe(torch.randn(2, 40))
    drive_to(model, "s1", SeedStage.BLENDING)
    alphas = [model.slot("s1").alpha]
    for epoch in range(5):
        model.end_epoch(epoch)
        alphas.append(model.slot("s1").alpha)
    assert alphas[0] == 0.0
    assert alphas[4] == pytest.approx(1.0) and alphas[5] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(alphas))
    assert alphas[2] == pytest.approx(alpha_progress(schedule, 0.5))
    if schedule == "linear":
        assert alphas[1] == pytest.approx(0.25)
    else:
        assert alphas[1] < 0.25, f"{schedule} starts slower than linear"


def test_set_alpha_rebases_the_ramp(conv_model, drive_to) -> None:
    drive_to(conv_model, "s1", SeedStage.BLENDING)
    conv_model.set_alpha("s1", 0.5, epoch=0, reason="test")
    conv_model.end_epoch(0)
    assert conv_model.slot("s1").alpha == pytest.approx(0.75)  # halfway from 0.5 to 1 over a 2-epoch tempo
    conv_model.end_epoch(1)
    assert conv_model.slot("s1").alpha == pytest.approx(1.0)


def test_fossilized_seed_replaces_the_features(conv_model, drive_to) -> None:
    drive_to(conv_model, "s2", SeedStage.FOSSILIZED)
    slot = conv_model.slot("s2")
    h = torch.randn(3, *slot.feature_shape)
    assert torch.equal(slot(h), slot.seed(h))
    assert set(map(id, slot.seed.parameters())) <= set(map(id, conv_model.host_parameters()))
    assert conv_model.seed_parameters() == []


# -- joint seeds (KasminaConfig.isolate_seeds off) ----------------------------------------------------------------
@pytest.fixture
def joint_model(fast_config: KasminaConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = wrap(
        ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS, config=dataclasses.replace(fast_config, isolate_seeds=False)
    )
    model.probe(torch.randn(2, 40))
    return model


def test_a_joint_training_seed_is_in_the_forward_and_the_host_learns_through_it(joint_model, drive_to) -> None:
    bare = copy.deepcopy(joint_model.host)
    drive_to(joint_model, "s2", SeedStage.TRAINING, blueprint="conv_heavy")  # perturbed: no longer the identity
    x, y = torch.randn(16, 40), torch.randint(0, 10, (16,))
    slot = joint_model.slot("s2")
    seed = slot.seed
    with torch.no_grad():
        h = torch.randn(4, *slot.feature_shape)
        assert not torch.allclose(seed(h), h)
        assert torch.equal(slot(h), seed(h))
    with GradientIsolationMonitor(joint_model) as monitor:
        got = _host_grads(joint_model.host, x, y)
    assert monitor.violations == 0, "a joint seed is meant to pass gradient to the host: nothing to flag"
    expected = _host_grads(bare, x, y)
    assert not torch.equal(got["conv1.weight"], expected["conv1.weight"]), "the host learns through the seed"
    assert all(p.grad is not None and float(p.grad.norm()) > 0 for p in seed.parameters() if p.dim() > 1)


def test_a_fresh_joint_seed_changes_nothing_and_stays_at_full_weight_when_it_blends(joint_model, drive_to) -> None:
    x = torch.randn(8, 40)
    with torch.no_grad():
        before = joint_model(x)
    drive_to(joint_model, "s1", SeedStage.TRAINING, perturb=False)
    with torch.no_grad():
        assert torch.equal(joint_model(x), before), "a seed starts as the identity"
    assert joint_model.slot("s1").report().alpha == 1.0, "reports say the seed is in the forward at full weight"
    joint_model.record_metrics("s1", improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
    joint_model.advance("s1", epoch=1, reason="test")
    slot = joint_model.slot("s1")
    assert slot.stage is SeedStage.BLENDING and slot.alpha == 1.0
    joint_model.end_epoch(1)
    assert slot.alpha == 1.0


def test_isolate_seeds_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match=r"isolate_seeds.*'no'"):
        KasminaConfig(isolate_seeds="no")  # type: ignore[arg-type]


def test_culling_a_joint_seed_puts_the_host_back_as_it_was_when_the_seed_joined(joint_model, drive_to) -> None:
    drive_to(joint_model, "s1", SeedStage.TRAINING)
    joined = copy.deepcopy(joint_model.host.state_dict())
    params = list(joint_model.host.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # the host learns with the seed
    event = joint_model.cull("s1", epoch=3, reason="hurts validation")
    assert "host restored" in event.reason and "s1" not in joint_model.host_marks
    for name, value in joint_model.host.state_dict().items():
        assert torch.equal(value, joined[name]), name
    assert all(a is b for a, b in zip(params, joint_model.host.parameters(), strict=True)), "optimizers keep theirs"


def test_a_fossilized_joint_seed_keeps_the_host_and_an_isolated_cull_in_training_never_touches_it(
    joint_model, conv_model, drive_to
):
    drive_to(joint_model, "s1", SeedStage.TRAINING)
    assert set(joint_model.host_marks) == {"s1"}
    for epoch in range(1, 5):  # BLENDING, SHADOWING, PROBATIONARY, FOSSILIZED
        joint_model.record_metrics("s1", improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
        joint_model.advance("s1", epoch=epoch, reason="test")
    assert joint_model.slot("s1").stage is SeedStage.FOSSILIZED and joint_model.host_marks == {}
    drive_to(conv_model, "s1", SeedStage.TRAINING)
    assert conv_model.host_marks == {}, "an isolated seed in TRAINING has taught the host nothing"
    with torch.no_grad():
        conv_model.host.conv1.weight.add_(1.0)
    moved = conv_model.host.conv1.weight.clone()
    event = conv_model.cull("s1", epoch=2, reason="test")
    assert torch.equal(conv_model.host.conv1.weight, moved) and "host restored" not in event.reason


@pytest.mark.parametrize("stage", [SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY])
def test_culling_an_isolated_seed_once_it_blends_puts_the_host_back_as_it_was_when_blending_began(
    conv_model, drive_to, stage
) -> None:
    drive_to(conv_model, "s1", SeedStage.TRAINING)
    with torch.no_grad():
        conv_model.host.conv1.weight.add_(1.0)  # the host learns on its own while the seed is isolated: kept
    kept = copy.deepcopy(conv_model.host.state_dict())
    conv_model.record_metrics("s1", improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
    conv_model.advance("s1", epoch=1, reason="test")
    assert set(conv_model.host_marks) == {"s1"}
    slot, epoch = conv_model.slot("s1"), 2
    while slot.stage is not stage:
        conv_model.record_metrics("s1", improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
        if slot.stage is SeedStage.BLENDING and slot.alpha < 1.0:
            conv_model.end_epoch(epoch)
        else:
            conv_model.advance("s1", epoch=epoch, reason="test")
        epoch += 1
    with torch.no_grad():
        for p in conv_model.host.parameters():
            p.add_(0.5)  # the host learns with the blending seed in its forward
    event = conv_model.cull("s1", epoch=9, reason="hurts validation")
    assert "host restored" in event.reason and conv_model.host_marks == {}
    for name, value in conv_model.host.state_dict().items():
        assert torch.equal(value, kept[name]), name
