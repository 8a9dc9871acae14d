"""Gates G0-G5 read measured inputs against configurable thresholds and say why."""

from __future__ import annotations

import math

import pytest

from esper.leyline import Gate, GateInputs, GateThresholds, SeedStage, evaluate

DEFAULT = GateThresholds()


def test_each_gate_guards_one_forward_step() -> None:
    assert [g.target for g in Gate] == [
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    ]
    assert Gate.for_target(SeedStage.CULLED) is None


def test_g0_rejects_unknown_blueprint_and_busy_slot() -> None:
    assert evaluate(Gate.G0_GERMINATE, GateInputs(stage=SeedStage.DORMANT), DEFAULT).passed
    assert not evaluate(Gate.G0_GERMINATE, GateInputs(stage=SeedStage.DORMANT, blueprint_known=False), DEFAULT).passed
    busy = evaluate(Gate.G0_GERMINATE, GateInputs(stage=SeedStage.TRAINING), DEFAULT)
    assert not busy.passed and "TRAINING" in busy.reason and busy.reason.startswith("G0")


def test_g2_needs_epochs_improvement_and_isolation() -> None:
    good = GateInputs(stage=SeedStage.TRAINING, epochs_in_stage=3, improvement=0.02)
    assert evaluate(Gate.G2_BLEND, good, DEFAULT).passed
    early = GateInputs(stage=SeedStage.TRAINING, epochs_in_stage=1, improvement=0.02)
    assert not evaluate(Gate.G2_BLEND, early, DEFAULT).passed
    leaky = GateInputs(stage=SeedStage.TRAINING, epochs_in_stage=3, improvement=0.02, isolation_violations=1)
    assert "isolation" in evaluate(Gate.G2_BLEND, leaky, DEFAULT).reason
    nan = GateInputs(stage=SeedStage.TRAINING, epochs_in_stage=3, improvement=math.nan)
    assert not evaluate(Gate.G2_BLEND, nan, DEFAULT).passed


def test_thresholds_are_configuration() -> None:
    inputs = GateInputs(stage=SeedStage.TRAINING, epochs_in_stage=1, improvement=0.02)
    assert not evaluate(Gate.G2_BLEND, inputs, DEFAULT).passed
    assert evaluate(Gate.G2_BLEND, inputs, GateThresholds(min_training_epochs=1)).passed


def test_g3_waits_for_full_alpha() -> None:
    assert not evaluate(Gate.G3_SHADOW, GateInputs(stage=SeedStage.BLENDING, alpha=0.6), DEFAULT).passed
    assert evaluate(Gate.G3_SHADOW, GateInputs(stage=SeedStage.BLENDING, alpha=1.0), DEFAULT).passed


def test_g4_rejects_harm_and_g5_needs_positive_contribution() -> None:
    harm = GateInputs(stage=SeedStage.SHADOWING, epochs_in_stage=2, contribution=-0.05)
    assert not evaluate(Gate.G4_PROBATION, harm, DEFAULT).passed
    neutral = GateInputs(stage=SeedStage.SHADOWING, epochs_in_stage=2, contribution=0.0)
    assert evaluate(Gate.G4_PROBATION, neutral, DEFAULT).passed
    probation = GateInputs(stage=SeedStage.PROBATIONARY, epochs_in_stage=2, contribution=0.0, seed_grad_norm=1.0)
    assert not evaluate(Gate.G5_FOSSILIZE, probation, DEFAULT).passed
    helps = GateInputs(stage=SeedStage.PROBATIONARY, epochs_in_stage=2, contribution=0.01, seed_grad_norm=1.0)
    assert evaluate(Gate.G5_FOSSILIZE, helps, DEFAULT).passed
    exploding = GateInputs(stage=SeedStage.PROBATIONARY, epochs_in_stage=2, contribution=0.01, seed_grad_norm=math.inf)
    assert "gradient" in evaluate(Gate.G5_FOSSILIZE, exploding, DEFAULT).reason


def test_bad_threshold_config_names_field_and_value() -> None:
    with pytest.raises(ValueError) as err:
        GateThresholds.from_config({"min_training_epochs": -2})
    assert "min_training_epochs" in str(err.value) and "-2" in str(err.value)
    with pytest.raises(ValueError) as err:
        GateThresholds.from_config({"min_trainin_epochs": 2})
    assert "min_trainin_epochs" in str(err.value)
