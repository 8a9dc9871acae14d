"""Epochs of a set number of steps: the same data order however long an epoch is, resumable mid-pass."""

import math

import torch

from esper.tamiyo.policy import StaticPolicy
from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.report import build_report
from esper.tolaria.steps import epoch_batches

from .conftest import comparable, make_trainer


def _batches(trainer, epochs: int) -> list[list[int]]:
    return [b.tolist() for _ in range(epochs) for b in epoch_batches(trainer)]


def test_short_epochs_cut_the_same_sequence_of_batches_as_whole_passes(small_task) -> None:
    # 400 rows in batches of 100: a pass is 4 steps
    whole = make_trainer(small_task, policy=StaticPolicy())
    short = make_trainer(small_task, policy=StaticPolicy(), steps_per_epoch=3)
    assert short.steps_per_epoch() == 3 and whole.steps_per_epoch() == 4
    assert _batches(short, 4) == _batches(whole, 3)  # 12 batches = three passes, three permutations
    assert sorted(i for b in _batches(make_trainer(small_task, policy=StaticPolicy()), 1) for i in b) == list(
        range(400)
    )


def test_a_run_of_short_epochs_resumes_mid_pass_exactly(small_task, tmp_path) -> None:
    straight = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3)
    straight.fit()
    first = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3)
    first.fit(stop_after=3)  # 9 steps: the third pass is 1 batch in
    assert first.data_batch == 1
    save_checkpoint(first, tmp_path)
    resumed = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3)
    restore_checkpoint(resumed, read_checkpoint(tmp_path))
    resumed.fit()
    a, b = comparable(straight), comparable(resumed)
    assert a["history"] == b["history"] and a["events"] == b["events"] and a["decisions"] == b["decisions"]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_the_test_split_and_layer_health_are_measured_about_once_a_pass(small_task) -> None:
    trainer = make_trainer(small_task, epochs=7, policy=StaticPolicy(), steps_per_epoch=2)
    health = []
    trainer.sinks.append(lambda m: health.append(m.epoch) if type(m).__name__ == "LayerHealth" else None)
    trainer.fit()
    measured = [r.epoch for r in trainer.history if not math.isnan(r.test_accuracy)]
    assert trainer.epochs_per_pass() == 2
    assert measured == [1, 2, 4, 6, 7]  # the first, every pass, the last
    assert health == [1, 2, 4, 6]
    report = build_report(trainer, {})
    assert report["final_test_accuracy"] == trainer.history[-1].test_accuracy
    every = make_trainer(small_task, epochs=3, policy=StaticPolicy())
    every.fit()
    assert not any(math.isnan(r.test_accuracy) for r in every.history)  # whole passes: every epoch
