import math

import pytest
import torch

from esper.leyline import SeedStage, TelemetryEvent
from esper.tamiyo.policy import StaticPolicy
from esper.tolaria.governor import Governor, GovernorConfig

from .conftest import make_trainer


def test_non_finite_loss_trips():
    governor = Governor()
    for bad in (math.nan, math.inf):
        trip = governor.check(bad)
        assert trip is not None and trip.kind == "non_finite"
    assert not governor.losses  # bad losses never join the history


def test_a_spike_beyond_k_sigma_for_patience_steps_trips_and_ordinary_noise_does_not():
    governor = Governor(GovernorConfig(sigma=4.0, window=50, min_history=10, patience=3))
    for i in range(40):
        assert governor.check(1.0 + 0.01 * (i % 5)) is None
    assert governor.check(1.06) is None
    assert governor.check(5.0) is None and governor.check(5.0) is None  # two outliers: not yet a divergence
    trip = governor.check(5.0)
    assert trip is not None and trip.kind == "spike" and "4 std" in trip.reason and "3 steps in a row" in trip.reason


def test_an_ordinary_step_between_spikes_restarts_the_count():
    governor = Governor(GovernorConfig(sigma=4.0, window=50, min_history=10, patience=2))
    for i in range(40):
        governor.check(1.0 + 0.01 * (i % 5))
    for loss in (5.0, 1.02, 5.0, 1.01):
        assert governor.check(loss) is None
    assert governor.check(5.0) is None and governor.check(5.0) is not None


def test_a_step_within_sigma_rule_but_under_the_ratio_floor_is_ordinary_noise():
    """Late in a run: tiny mean and spread, so 6 std is a small absolute jump; the ratio floor ignores it."""
    governor = Governor(GovernorConfig(sigma=6.0, window=50, min_history=10, min_ratio=3.0, patience=1))
    for i in range(40):
        assert governor.check(0.05 + 0.001 * (i % 5)) is None
    assert governor.check(0.12) is None  # beyond mean + 6 std (0.052 + 0.009), under 3x the mean
    trip = governor.check(0.2)
    assert trip is not None and "3x their mean" in trip.reason


def test_no_spike_judgement_before_enough_history():
    governor = Governor(GovernorConfig(min_history=10))
    assert governor.check(1.0) is None and governor.check(100.0) is None


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="sigma"):
        GovernorConfig(sigma=0)
    with pytest.raises(ValueError, match=r"min_ratio.*0\.5"):
        GovernorConfig(min_ratio=0.5)
    with pytest.raises(ValueError, match="patience"):
        GovernorConfig(patience=0)


def _poisoned_trainer(task):
    """A run whose seed in s1 is TRAINING, then gets NaN weights after the last good snapshot."""
    trainer = make_trainer(task, epochs=6)
    messages = []
    trainer.sinks.append(messages.append)
    trainer.fit(stop_after=2)
    slot = trainer.model.slot("s1")
    assert slot.stage is SeedStage.TRAINING
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.fill_(math.nan)
    return trainer, messages


def test_nan_seed_rolls_back_weights_and_optimizers_culls_the_seed_and_training_goes_on(small_task):
    trainer, messages = _poisoned_trainer(small_task)
    good_weights = {k: v.clone() for k, v in trainer.governor.snapshot.model.items() if k.startswith("host.")}
    good_adam = trainer.governor.snapshot.optimizers["host"]["state"][0]["exp_avg"].clone()
    record = trainer.run_epoch()
    assert record.rolled_back
    # rolled back: the host is exactly the last good state (the NaN epoch's steps are gone)
    for name, value in trainer.model.state_dict().items():
        if name in good_weights:
            assert torch.equal(value, good_weights[name]), name
    assert torch.equal(trainer.optimizers["host"].state_dict()["state"][0]["exp_avg"], good_adam)
    # the seed was culled, with the governor's reason, and it lost its optimizer
    cull = next(e for e in trainer.model.events if e.to_stage is SeedStage.CULLED)
    assert cull.slot_id == "s1" and "governor" in cull.reason and "not finite" in cull.reason
    assert "s1" not in trainer.optimizers
    event = next(m for m in messages if isinstance(m, TelemetryEvent))
    assert event.kind == "governor_rollback" and event.slot_id == "s1" and event.attributes["trip"] == "non_finite"
    assert math.isfinite(record.val_loss)
    # training goes on with finite losses
    after = trainer.run_epoch()
    assert not after.rolled_back and math.isfinite(after.train_loss) and after.modes
    assert trainer.governor.rollbacks == 1


def test_rollback_without_a_live_seed_still_restores_and_says_so(small_task):
    trainer = make_trainer(small_task, epochs=3, policy=StaticPolicy())
    messages = []
    trainer.sinks.append(messages.append)
    trainer.run_epoch()
    with torch.no_grad():
        trainer.model.host.linear.bias.fill_(math.inf)
    record = trainer.run_epoch()
    assert record.rolled_back and torch.isfinite(trainer.model.host.linear.bias).all()
    event = next(m for m in messages if isinstance(m, TelemetryEvent))
    assert event.slot_id is None and "no live seed" in event.message
