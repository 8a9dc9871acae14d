import math

import numpy as np
import pytest

from esper.leyline import OBSERVATION_SIZE, SeedStage, SeedStateReport, TrainingSignals, feature_index
from esper.tamiyo.tracker import SignalTracker


def _update(tracker: SignalTracker, epoch: int, val_loss: float, val_acc: float, train_loss: float = 1.0):
    return tracker.update(
        epoch=epoch, train_loss=train_loss, val_loss=val_loss, train_accuracy=0.5, val_accuracy=val_acc
    )


def test_deltas_and_best_values_follow_the_epochs():
    tracker = SignalTracker()
    _update(tracker, 1, 1.0, 0.50)
    t = _update(tracker, 2, 0.8, 0.60)
    assert t.loss_delta == pytest.approx(-0.2)
    assert t.accuracy_delta == pytest.approx(0.10)
    assert t.best_val_loss == 0.8 and t.best_val_accuracy == 0.60
    assert t.improved and t.plateau_epochs == 0


def test_plateau_counts_epochs_without_improvement_and_resets_on_improvement():
    tracker = SignalTracker(min_delta=0.01)
    _update(tracker, 1, 1.0, 0.5)
    assert _update(tracker, 2, 0.995, 0.505).plateau_epochs == 1  # within min_delta: not an improvement
    assert _update(tracker, 3, 1.0, 0.5).plateau_epochs == 2
    assert _update(tracker, 4, 0.9, 0.5).plateau_epochs == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_sanitized_flagged_and_never_count_as_improvement(bad):
    tracker = SignalTracker()
    _update(tracker, 1, 1.0, 0.5)
    t = tracker.update(epoch=2, train_loss=bad, val_loss=bad, train_accuracy=0.5, val_accuracy=bad)
    assert set(t.sanitized) == {"train_loss", "val_loss", "val_accuracy"}
    assert t.val_loss == 1.0 and t.val_accuracy == 0.5  # last good values, not NaN
    assert all(math.isfinite(v) for v in (t.loss_delta, t.accuracy_delta, t.best_val_loss, t.best_val_accuracy))
    assert not t.improved and t.plateau_epochs == 1
    assert tracker.best_val_loss == 1.0  # -inf did not become the best loss
    assert all(math.isfinite(v) for v in tracker.val_losses)


def test_histories_are_short():
    tracker = SignalTracker(history=3)
    for e in range(1, 8):
        _update(tracker, e, 1.0 / e, 0.1 * e)
    assert list(tracker.val_losses) == pytest.approx([1 / 5, 1 / 6, 1 / 7])


def _signals(epoch: int, contribution: float | None, seed_id: str = "a") -> TrainingSignals:
    report = SeedStateReport(
        slot_id="s1", stage=SeedStage.BLENDING, seed_id=seed_id, blueprint="conv_light", contribution=contribution
    )
    return TrainingSignals(
        epoch=epoch, train_loss=1.0, val_loss=1.0, train_accuracy=0.5, val_accuracy=0.5, seeds=[report]
    )


def test_slot_contributions_skip_non_finite_and_reset_for_a_new_seed():
    tracker = SignalTracker()
    tracker.observe(_signals(1, 0.01))
    tracker.observe(_signals(2, math.nan))
    tracker.observe(_signals(3, 0.02))
    assert tracker.contributions("s1") == (0.01, 0.02)
    tracker.observe(_signals(4, -0.5, seed_id="b"))
    assert tracker.contributions("s1") == (-0.5,)


def test_observation_has_the_leyline_layout():
    tracker = SignalTracker()
    signals = _signals(1, 0.03)
    tracker.observe(signals)
    obs = tracker.observation(signals, epoch_progress=0.25, params_initial=100)
    assert obs.shape == (OBSERVATION_SIZE,) and obs.dtype == np.float32
    assert obs[feature_index("epoch_progress")] == pytest.approx(0.25)
    assert obs[feature_index("slot0_stage_blending")] == 1.0
    assert obs[feature_index("slot0_contribution")] == pytest.approx(0.03)
    assert obs[feature_index("active_seeds")] == 1.0


def test_observation_refuses_signals_it_has_not_observed():
    tracker = SignalTracker()
    with pytest.raises(ValueError, match=r"signals\.epoch"):
        tracker.observation(_signals(1, 0.0), epoch_progress=0.0, params_initial=1)


def test_state_dict_round_trip_continues_identically():
    a, b = SignalTracker(), SignalTracker()
    for e in range(1, 4):
        a.observe(_signals(e, 0.01 * e))
    b.load_state_dict(a.state_dict())
    assert a.observe(_signals(4, 0.1)) == b.observe(_signals(4, 0.1))
    assert a.contributions("s1") == b.contributions("s1")


def test_bad_configuration_names_the_field():
    with pytest.raises(ValueError, match="min_delta"):
        SignalTracker(min_delta=-1)


def test_observe_takes_the_published_plateau_and_best_values_as_they_are() -> None:
    from esper.leyline import TrainingSignals
    from esper.tamiyo.tracker import SignalTracker

    producer, reader = SignalTracker(), SignalTracker()
    for epoch, (loss, acc) in enumerate([(1.0, 0.5), (0.9, 0.6), (0.9, 0.6), (0.899, 0.601)], start=1):
        t = producer.update(epoch=epoch, train_loss=1.0, val_loss=loss, train_accuracy=0.5, val_accuracy=acc)
        message = TrainingSignals(
            epoch=epoch,
            train_loss=t.train_loss,
            val_loss=t.val_loss,
            train_accuracy=t.train_accuracy,
            val_accuracy=t.val_accuracy,
            loss_delta=t.loss_delta,
            accuracy_delta=t.accuracy_delta,
            plateau_epochs=t.plateau_epochs,
            best_val_loss=t.best_val_loss,
            best_val_accuracy=t.best_val_accuracy,
        )
        seen = reader.observe(message)
        assert seen.plateau_epochs == t.plateau_epochs and seen.best_val_accuracy == t.best_val_accuracy
    assert reader.plateau_epochs == 2  # the last two epochs moved less than PLATEAU_MIN_DELTA
