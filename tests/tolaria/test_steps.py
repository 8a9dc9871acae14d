"""The training step's hot path: governor statistics, cheap snapshots, the isolated seed pass."""

import dataclasses
import math
import random
import statistics

import pytest
import torch

from esper.kasmina import SeedSlot
from esper.leyline import SeedStage
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import StaticPolicy
from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.config import TrainerConfig
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.modes import TrainingMode
from esper.tolaria.objective import CLASSIFICATION, Regression
from esper.tolaria.steps import (
    DeferredScore,
    host_only_parameters,
    merge_fossilized_optimizers,
    plan_epoch,
    train_epoch,
)
from esper.tolaria.trainer import Trainer

from .conftest import FAST_KASMINA, eager_heuristic, make_trainer


def _reference_trips(losses, config):
    """The governor's rule computed from scratch over the window (what running sums must equal)."""
    history, trips = [], []
    for loss in losses:
        tripped = False
        if len(history) >= config.min_history:
            mean, std = statistics.fmean(history), statistics.stdev(history)
            tripped = loss > mean + config.sigma * max(std, 1e-8)
        trips.append(tripped)
        if not tripped:
            history = [*history, loss][-config.window :]
    return trips


def test_running_statistics_trip_exactly_where_the_full_window_rule_does():
    config = GovernorConfig(sigma=2.0, window=20, min_history=5, min_ratio=1.0, patience=1)
    rng = random.Random(7)
    losses = [rng.lognormvariate(0.0, 0.6) for _ in range(600)]
    governor = Governor(config)
    got = [governor.check(loss) is not None for loss in losses]
    assert got == _reference_trips(losses, config)
    assert any(got) and not all(got)  # the sequence exercises both outcomes


def test_running_statistics_survive_a_state_round_trip():
    config = GovernorConfig(sigma=3.0, window=10, min_history=4)
    first = Governor(config)
    for i in range(25):
        first.check(1.0 + 0.1 * math.sin(i))
    second = Governor(config)
    second.load_state_dict(first.state_dict())
    for loss in (1.05, 1.3, 2.0, 0.9):
        assert (first.check(loss) is None) == (second.check(loss) is None)


def test_a_snapshot_is_not_changed_by_later_training_and_restores_exactly(small_task):
    trainer = make_trainer(small_task, epochs=4)
    trainer.fit(stop_after=2)  # the second snapshot is written into the first one's buffers
    snap = trainer.governor.snapshot
    assert snap.epoch == 2
    held = {k: v.clone() for k, v in snap.model.items()}
    held_adam = snap.optimizers["host"]["state"][0]["exp_avg"].clone()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, held[name]), name
    train_epoch(trainer)  # steps without a snapshot
    assert any(not torch.equal(v, held[k]) for k, v in trainer.model.state_dict().items())
    for name, value in snap.model.items():
        assert torch.equal(value, held[name]), name
    assert torch.equal(snap.optimizers["host"]["state"][0]["exp_avg"], held_adam)
    trainer.governor.restore(trainer.model, trainer.optimizers)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, held[name]), name
    assert torch.equal(trainer.optimizers["host"].state_dict()["state"][0]["exp_avg"], held_adam)


def test_a_restored_optimizer_shares_no_tensor_with_the_snapshot(small_task):
    trainer = make_trainer(small_task, epochs=3)
    trainer.fit(stop_after=1)
    trainer.governor.restore(trainer.model, trainer.optimizers)
    restored = trainer.optimizers["host"].state_dict()["state"][0]["exp_avg"]
    before = restored.clone()
    snap_tensor = trainer.governor.snapshot.optimizers["host"]["state"][0]["exp_avg"]
    assert restored.data_ptr() != snap_tensor.data_ptr()
    snap_tensor.add_(1.0)  # the next snapshot writes into these buffers
    assert torch.equal(trainer.optimizers["host"].state_dict()["state"][0]["exp_avg"], before)


@pytest.fixture(scope="module")
def at_training(small_task, tmp_path_factory):
    """A checkpoint of a run whose seed in s1 has just entered TRAINING (epoch 2)."""
    trainer = make_trainer(small_task, epochs=6)
    trainer.fit(stop_after=2)
    path = tmp_path_factory.mktemp("training")
    save_checkpoint(trainer, path)
    return path


def _training_trainer(task, path, **config):
    trainer = make_trainer(task, epochs=6, **config)
    restore_checkpoint(trainer, read_checkpoint(path))
    assert trainer.model.slot("s1").stage is SeedStage.TRAINING
    return trainer


def test_the_plan_names_isolated_seeds_only_with_the_isolated_pass(small_task, at_training):
    trainer = _training_trainer(small_task, at_training)
    with_pass = plan_epoch(trainer.model, trainer.optimizers, trainer.host_parameters())
    without = plan_epoch(trainer.model, trainer.optimizers, trainer.host_parameters(), isolated_seed_pass=False)
    assert with_pass.mode is TrainingMode.ISOLATED and with_pass.isolated == ("s1",)
    assert without.isolated == () and set(without.stepped) == {"host", "s1"}
    seed_ids = {id(p) for p in trainer.model.slot("s1").seed.parameters()}
    assert not seed_ids & {id(p) for p in host_only_parameters(trainer.model, {"s1"})}


@pytest.mark.parametrize("isolated_seed_pass", [True, False])
def test_an_isolated_seed_learns_and_the_host_gets_nothing_through_it(small_task, at_training, isolated_seed_pass):
    trainer = _training_trainer(small_task, at_training, isolated_seed_pass=isolated_seed_pass)
    seed_before = [p.clone() for p in trainer.model.slot("s1").seed.parameters()]
    record = trainer.run_epoch()
    assert record.modes.get("isolated", 0) > 0
    assert trainer.model.slot("s1").metrics.isolation_violations == 0
    after = trainer.model.slot("s1").seed.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(seed_before, after, strict=True))


def test_without_the_isolated_pass_a_training_step_costs_one_forward_and_backward(small_task, at_training):
    calls = {}
    for flag in (True, False):
        trainer = _training_trainer(small_task, at_training, isolated_seed_pass=flag)
        forwards = []
        handle = trainer.model.host.register_forward_hook(lambda *_, seen=forwards: seen.append(1))
        train_epoch(trainer)
        handle.remove()
        calls[flag] = len(forwards)
    steps = trainer.steps_per_epoch()
    assert calls == {True: 2 * steps, False: steps}


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainerConfig(checkpoint_every=0)


@pytest.fixture(scope="module")
def fossilization(small_task, tmp_path_factory):
    """A run checkpointed at the boundary where s1 fossilized, and its weights two epochs later."""
    trainer = make_trainer(small_task, epochs=20)
    while trainer.model.slot("s1").stage is not SeedStage.FOSSILIZED:
        assert trainer.epoch < 20, "the eager heuristic fossilizes s1 within a few epochs"
        trainer.run_epoch()
    path = tmp_path_factory.mktemp("fossilized")
    save_checkpoint(trainer, path)
    boundary = trainer.epoch
    trainer.fit(stop_after=boundary + 2)
    return path, boundary, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _restored(task, path, **config):
    trainer = make_trainer(task, epochs=20, **config)
    restore_checkpoint(trainer, read_checkpoint(path))
    assert "s1" in trainer.optimizers  # saved before the merge: the seed still had its own
    return trainer


def test_a_fossilized_seed_joins_the_host_optimizer_with_its_adam_state(small_task, fossilization):
    trainer = _restored(small_task, fossilization[0])
    seed_params = list(trainer.model.slot("s1").seed.parameters())
    seed_state = [trainer.optimizers["s1"].state[p]["exp_avg"].clone() for p in seed_params]
    merged = merge_fossilized_optimizers(trainer)
    assert merged == ["s1"] and "s1" not in trainer.optimizers
    host = trainer.optimizers["host"]
    stepped = {id(p) for group in host.param_groups for p in group["params"]}
    assert {id(p) for p in seed_params} <= stepped
    for param, state in zip(seed_params, seed_state, strict=True):
        assert torch.equal(host.state[param]["exp_avg"], state)
    # the snapshot now has the merged structure, so a rollback restores into it
    assert set(trainer.governor.snapshot.optimizers) == set(trainer.optimizers)
    trainer.governor.restore(trainer.model, trainer.optimizers)


def test_with_separate_optimizers_a_fossilized_seed_keeps_its_own(small_task, fossilization):
    trainer = _restored(small_task, fossilization[0], merge_fossilized=False)
    trainer.run_epoch()
    assert "s1" in trainer.optimizers


def test_resuming_across_a_merge_reproduces_the_run(small_task, fossilization):
    path, boundary, weights = fossilization
    resumed = _restored(small_task, path)
    resumed.fit(stop_after=boundary + 2)
    assert "s1" not in resumed.optimizers
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, weights[name]), name


@pytest.mark.parametrize("seed_init", ["gradmax", "zero"])
def test_a_germinated_seed_is_initialized_by_gradmax_and_stays_the_identity(small_task, seed_init):
    policy = HeuristicTamiyo(
        HeuristicConfig(
            plateau_patience=0, candidates=(BlueprintChoice("conv_heavy"),), thresholds=FAST_KASMINA.thresholds
        )
    )
    trainer = make_trainer(small_task, epochs=6, seed_init=seed_init, policy=policy)
    trainer.fit(stop_after=1)
    slot = trainer.model.slot("s1")
    assert slot.stage is SeedStage.GERMINATED and slot.blueprint == "conv_heavy"
    before = slot.seed.body[0].weight.clone()
    train_epoch(trainer)  # a GERMINATED seed is initialized as the epoch starts
    assert torch.equal(slot.seed.body[0].weight, before) is (seed_init == "zero")
    assert not slot.seed.body[2].weight.any()  # the last layer is still zero: the seed is the identity


def test_an_unknown_seed_init_is_named():
    with pytest.raises(ValueError, match="seed_init"):
        TrainerConfig(seed_init="net2net")


@pytest.mark.parametrize("limit", [1, 50, 1 << 20], ids=["every-step", "every-few-steps", "at-the-end"])
def test_a_deferred_score_equals_scoring_every_step(limit):
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 5, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(9)]
    score = DeferredScore(CLASSIFICATION, limit=limit)
    for logits, y in batches:
        score.add(logits.requires_grad_(), y)
        assert score.held < limit or limit == 1 << 20  # flushed once the limit is reached
    assert score.total() == sum(int((logits.argmax(1) == y).sum()) for logits, y in batches)
    assert score.outputs == [] and score.total() == score.sum  # flushed, and a second total adds nothing


def test_a_deferred_r2_is_summed_in_float64():
    gen = torch.Generator().manual_seed(4)
    targets = torch.randn(4000, generator=gen)
    objective = Regression.fitted(targets)
    score = DeferredScore(objective, limit=1_000)
    outputs = targets + 0.1 * torch.randn(4000, generator=gen)
    for start in range(0, 4000, 100):
        score.add(outputs[start : start + 100], targets[start : start + 100])
    exact = float((1.0 - (outputs.double() - targets.double()) ** 2 / objective.variance).sum())
    assert score.total() == pytest.approx(exact, rel=1e-12)


def test_a_joint_seed_trains_in_the_forward_with_the_host_in_one_pass_and_fossilizes(small_task):
    kasmina = dataclasses.replace(FAST_KASMINA, isolate_seeds=False)
    trainer = Trainer(small_task, eager_heuristic(), TrainerConfig(epochs=20, seed=0), kasmina=kasmina)
    while trainer.model.slot("s1").stage is not SeedStage.TRAINING:
        trainer.run_epoch()
    plan = plan_epoch(trainer.model, trainer.optimizers, trainer.host_parameters())
    assert plan.isolated == () and plan.mode is TrainingMode.BLENDED and set(plan.stepped) >= {"host", "s1"}
    forwards = []
    handle = trainer.model.host.register_forward_hook(lambda *_: forwards.append(1))
    host_before = [p.clone() for p in trainer.model.host.parameters()]
    seed_before = [p.clone() for p in trainer.model.slot("s1").seed.parameters()]
    outcome = train_epoch(trainer)
    handle.remove()
    assert outcome.modes == {"blended": trainer.steps_per_epoch()}
    assert len(forwards) == trainer.steps_per_epoch(), "no extra pass: the seed learns from the step's own loss"
    assert any(not torch.equal(a, b) for a, b in zip(host_before, trainer.model.host.parameters(), strict=True))
    assert any(
        not torch.equal(a, b) for a, b in zip(seed_before, trainer.model.slot("s1").seed.parameters(), strict=True)
    )
    while trainer.epoch < 20 and trainer.model.slot("s1").stage is not SeedStage.FOSSILIZED:
        trainer.run_epoch()
    slot = trainer.model.slot("s1")
    assert slot.stage is SeedStage.FOSSILIZED and slot.metrics.isolation_violations == 0
    blending = [e for e in trainer.model.events if SeedStage(e.to_stage) is SeedStage.BLENDING]
    assert blending, "the joint seed went through the same gates"


def test_isolation_is_checked_in_an_epoch_where_another_seed_blends(small_task, monkeypatch):
    trainer = make_trainer(small_task, epochs=6, policy=StaticPolicy())
    model = trainer.model
    for slot_id in ("s1", "s2"):
        model.germinate(slot_id, "conv_light", epoch=0, reason="test")
        trainer.optimizers[slot_id] = trainer.new_seed_optimizer(model.seed_parameters(slot_id))
        model.advance(slot_id, epoch=0, reason="test")
    model.end_epoch(0)
    model.record_metrics("s1", improvement=0.1, contribution=0.02, seed_grad_norm=1.0)
    model.advance("s1", epoch=1, reason="test")
    plan = plan_epoch(model, trainer.optimizers, trainer.host_parameters())
    assert plan.mode is TrainingMode.BLENDED and plan.isolated == ("s2",)
    assert train_epoch(trainer).norms["isolation_violations"] == 0
    # the bug isolation guards against: the TRAINING seed reads the live host features
    monkeypatch.setattr(SeedSlot, "_seed_input", lambda self, h: h)
    assert train_epoch(trainer).norms["isolation_violations"] == 1
