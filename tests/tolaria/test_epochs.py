"""Epochs of a set number of steps: the same data order however long an epoch is, resumable mid-pass."""

import math

import pytest
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


@pytest.mark.parametrize("wait", [0, 15])  # 15: the host still waits for its seeds when the run resumes
def test_a_run_of_short_epochs_resumes_mid_pass_exactly(small_task, tmp_path, wait) -> None:
    straight = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3, host_wait_steps=wait)
    straight.fit()
    first = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3, host_wait_steps=wait)
    first.fit(stop_after=3)  # 9 steps: the third pass is 1 batch in
    assert first.data_batch == 1
    assert first.host_waits() is bool(wait)
    save_checkpoint(first, tmp_path)
    resumed = make_trainer(small_task, epochs=8, seed=2, steps_per_epoch=3, host_wait_steps=wait)
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


def test_a_settled_run_has_one_boundary_a_pass_and_trains_exactly_as_with_one_every_epoch(small_task) -> None:
    # 400 rows in batches of 100: a pass is 4 one-step epochs
    lengthened = make_trainer(small_task, epochs=8, policy=StaticPolicy(), steps_per_epoch=1)
    lengthened.fit()
    every = make_trainer(small_task, epochs=8, policy=StaticPolicy(), steps_per_epoch=1, lengthen_settled=False)
    every.fit()
    # the first epoch is short (nothing decided yet); then each round runs to the end of its pass
    assert [(r.epoch, r.span, r.step) for r in lengthened.history] == [(1, 1, 1), (4, 3, 4), (8, 4, 8)]
    assert [r.epoch for r in every.history] == list(range(1, 9))
    a, b = comparable(lengthened), comparable(every)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert [r.lr for r in lengthened.history] == [b["history"][e - 1]["lr"] for e in (1, 4, 8)]
    assert lengthened.history[-1].val_accuracy == every.history[-1].val_accuracy


def test_seeds_in_flight_and_commands_keep_a_boundary_after_every_epoch(small_task) -> None:
    trainer = make_trainer(small_task, epochs=40, steps_per_epoch=1)  # germinates at once, slot after slot
    trainer.fit()
    history = trainer.history
    assert trainer.step == 40 and history[-1].epoch == 40
    commanded = {r.epoch for r in trainer.model.events}  # every boundary a command changed a slot at
    lengthened = [i for i, r in enumerate(history) if r.span > 1]
    assert lengthened and history[lengthened[0] - 1].stages == {"FOSSILIZED": 3}
    for i in lengthened:  # only after a boundary with every slot settled and no command applied
        before = history[i - 1]
        assert set(before.stages) <= {"DORMANT", "FOSSILIZED"} and before.epoch not in commanded
    # every epoch before the three seeds were fossilized had its own boundary
    assert [r.span for r in history[: lengthened[0]]] == [1] * lengthened[0]


def test_a_run_stopped_inside_a_lengthened_round_resumes_exactly(small_task, tmp_path) -> None:
    straight = make_trainer(small_task, epochs=10, seed=1, policy=StaticPolicy(), steps_per_epoch=1)
    straight.fit()
    first = make_trainer(small_task, epochs=10, seed=1, policy=StaticPolicy(), steps_per_epoch=1)
    first.fit(stop_after=2)  # the round from epoch 2 runs on to the pass's end at epoch 4
    assert first.epoch == 4 and first.quiet_boundary
    save_checkpoint(first, tmp_path)
    resumed = make_trainer(small_task, epochs=10, seed=1, policy=StaticPolicy(), steps_per_epoch=1)
    restore_checkpoint(resumed, read_checkpoint(tmp_path))
    resumed.fit()
    a, b = comparable(straight), comparable(resumed)
    assert a["history"] == b["history"] and [r["epoch"] for r in a["history"]] == [1, 4, 8, 10]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_the_host_waits_for_its_seeds_while_they_learn_then_learns_with_them(small_task) -> None:
    from esper.leyline import SeedStage
    from esper.tolaria.modes import JOINED_STAGES

    trainer = make_trainer(small_task, epochs=30, steps_per_epoch=1, host_wait_steps=25)
    host = trainer.model.host
    first = next(p for p in host.parameters())  # a host layer: never a seed's
    rows = []

    def after(t, record) -> None:
        stages = [SeedStage(s.stage) for s in t.model.slots.values()]
        seeds = [p.detach().clone() for s in t.model.slots.values() if s.seed is not None for p in s.seed.parameters()]
        rows.append((record.step, first.detach().clone(), all(s in JOINED_STAGES for s in stages), seeds))

    before = first.detach().clone()
    trainer.fit(on_epoch=after)
    previous = [before] + [r[1] for r in rows[:-1]]
    waited = [torch.equal(row[1], last) for row, last in zip(rows, previous, strict=True)]
    # a round trains under the stages of the boundary before it: the host sits out every step before step 25
    # while a slot has no seed in the forward
    expected = [row[0] <= 25 and not (i > 0 and rows[i - 1][2]) for i, row in enumerate(rows)]
    assert waited == expected and sum(expected) >= 3
    seeds_learned = [r[3] for r, wait in zip(rows, expected, strict=True) if wait and r[3]]
    assert len(seeds_learned) >= 2 and not all(
        torch.equal(a, b) for a, b in zip(seeds_learned[0], seeds_learned[-1], strict=False)
    )  # the seeds learn while the host waits
    # the same run without waiting trains its host from the first step
    eager = make_trainer(small_task, epochs=1, steps_per_epoch=1)
    weight = next(p for p in eager.model.host.parameters()).detach().clone()
    eager.fit()
    assert not torch.equal(next(p for p in eager.model.host.parameters()), weight)


def test_host_wait_steps_must_not_be_negative() -> None:
    from esper.tolaria.config import TrainerConfig

    with pytest.raises(ValueError, match=r"field 'host_wait_steps'.*-1"):
        TrainerConfig(host_wait_steps=-1)


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "joint"])
def test_a_joint_seed_is_in_the_forward_from_training_so_the_host_stops_waiting_then(small_task, isolate) -> None:
    import dataclasses

    from esper.leyline import SeedStage
    from esper.tolaria.trainer import Trainer, TrainerConfig

    from .conftest import FAST_KASMINA, eager_heuristic

    kasmina = dataclasses.replace(FAST_KASMINA, isolate_seeds=isolate)
    trainer = Trainer(small_task, eager_heuristic(), TrainerConfig(epochs=4, host_wait_steps=100), kasmina=kasmina)
    model = trainer.model
    assert trainer.host_waits()  # no seed anywhere yet
    for slot_id in model.slots:
        model.germinate(slot_id, "conv_light", epoch=0, reason="test")
        model.advance(slot_id, epoch=0, reason="test")
    assert all(s.stage is SeedStage.TRAINING for s in model.slots.values())
    # every seed in TRAINING: a joint one is in the forward, an isolated one is not until it blends
    assert trainer.host_waits() is isolate
