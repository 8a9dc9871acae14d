"""Fixtures for Kasmina tests: permissive gate thresholds and a helper that walks a slot to a stage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from esper.kasmina import ConvHost1D, KasminaConfig, MorphogeneticModel, wrap
from esper.leyline import GateThresholds, SeedStage

DriveTo = Callable[..., None]


@pytest.fixture
def fast_config() -> KasminaConfig:
    """Gates that pass as soon as the metrics are good: no minimum epochs, a two-epoch ramp; seeds isolated
    (the tests of joint seeds, the default, replace ``isolate_seeds``)."""
    thresholds = GateThresholds(min_training_epochs=0, min_shadowing_epochs=0, min_probation_epochs=0)
    return KasminaConfig(thresholds=thresholds, blend_epochs=2, embargo_epochs=2, isolate_seeds=True)


@pytest.fixture
def conv_model(fast_config: KasminaConfig) -> MorphogeneticModel:
    """A probed ConvHost1D (8 channels) with its three default slots."""
    torch.manual_seed(0)
    model = wrap(ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS, config=fast_config)
    model.probe(torch.randn(2, 40))
    return model


def _perturb(model: MorphogeneticModel, slot_id: str) -> None:
    # Fresh seeds are the identity; nudge them so tests can tell a seed's effect from the host's.
    with torch.no_grad():
        for p in model.seed_parameters(slot_id):
            p.add_(0.2 * torch.randn_like(p))


@pytest.fixture
def drive_to() -> DriveTo:
    """``drive_to(model, slot_id, stage, blueprint=..., perturb=True)``: walk a DORMANT slot forward to ``stage``.

    Records good metrics before each gated step and runs epochs until blending is done.
    """

    def drive(
        model: MorphogeneticModel,
        slot_id: str,
        stage: SeedStage,
        blueprint: str = "conv_light",
        perturb: bool = True,
    ) -> None:
        slot = model.slot(slot_id)
        epoch = 0
        model.germinate(slot_id, blueprint, epoch=epoch, reason="test")
        if perturb:
            _perturb(model, slot_id)
        while slot.stage is not stage:
            model.record_metrics(slot_id, improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
            if slot.stage is SeedStage.BLENDING and slot.alpha < 1.0:
                model.end_epoch(epoch)
            else:
                model.advance(slot_id, epoch=epoch, reason="test")
            epoch += 1

    return drive
