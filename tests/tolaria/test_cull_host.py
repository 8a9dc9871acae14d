"""Culling a seed the host has learned with: the trainer keeps whichever host does better on validation.

Putting the host back as it was when the seed joined protects it from what it
learned with a seed that failed, but also undoes everything else it learned
since, which other seeds were trained on. The trainer scores both hosts on the
validation split without the seed and keeps the better one; these tests make
each side win on purpose and check the host, the event and the one decision path.
"""

import dataclasses

import pytest
import torch

from esper.leyline import AdaptationCommand, CommandAction, CommandStatus, SeedStage
from esper.tamiyo.policy import StaticPolicy
from esper.tolaria.evaluation import evaluate
from esper.tolaria.governor import Trip
from esper.tolaria.trainer import Trainer, TrainerConfig

from .conftest import FAST_KASMINA

JOINT = dataclasses.replace(FAST_KASMINA, isolate_seeds=False)


def host_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.host.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def joined(small_task) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """A run whose s2 seed joined the forward at epoch 2 (joint: in TRAINING), and the host as it was then."""
    trainer = Trainer(small_task, StaticPolicy(), TrainerConfig(epochs=8, seed=1), kasmina=JOINT)
    germinate = AdaptationCommand(command_id="g", action=CommandAction.GERMINATE, slot_id="s2", blueprint="conv_light")
    trainer.run_epoch([germinate])
    trainer.run_epoch([AdaptationCommand(command_id="a", action=CommandAction.ADVANCE, slot_id="s2")])
    assert trainer.model.slot("s2").stage is SeedStage.TRAINING and "s2" in trainer.model.host_marks
    return trainer, {k: v.clone() for k, v in trainer.model.host_marks["s2"].items()}


def cull(trainer: Trainer) -> str:
    [result] = trainer.apply_commands([AdaptationCommand(command_id="c", action=CommandAction.CULL, slot_id="s2")])
    assert result.status is CommandStatus.APPLIED, result.reason
    assert trainer.model.slot("s2").stage is SeedStage.CULLED and "s2" not in trainer.model.host_marks
    return trainer.model.events[-1].reason


def val_loss_without_seed(trainer: Trainer) -> float:
    with trainer.model.seed_disabled("s2"):
        return evaluate(trainer.model, trainer.task.val, objective=trainer.task.objective).loss


def test_a_host_that_learned_well_since_the_seed_joined_is_kept(joined):
    trainer, mark = joined
    for _ in range(4):  # the host learns on for four epochs: far better than at epoch 2
        trainer.run_epoch()
    now = host_state(trainer)
    assert not trainer.model.restore_pays("s2", trainer.val_loss)
    assert same(host_state(trainer), now), "asking changes nothing"
    reason = cull(trainer)
    assert "host kept as it is (without the seed it does better" in reason
    assert same(host_state(trainer), now) and not same(now, mark)


def test_a_host_the_seed_left_worse_is_put_back(joined):
    trainer, mark = joined
    trainer.run_epoch()
    with torch.no_grad():  # the host as a harmful seed could leave it: worse than when the seed joined
        for p in trainer.model.host.parameters():
            p.add_(torch.randn_like(p))
    damaged = val_loss_without_seed(trainer)
    assert trainer.model.restore_pays("s2", trainer.val_loss)
    reason = cull(trainer)
    assert "host restored to its state when the seed joined" in reason
    assert same(host_state(trainer), mark)
    assert evaluate(trainer.model, trainer.task.val, objective=trainer.task.objective).loss < damaged


def test_the_governor_s_cull_of_a_culprit_keeps_the_better_host_too(joined, monkeypatch):
    trainer, _ = joined
    for _ in range(4):
        trainer.run_epoch()
    asked = []
    real = trainer.val_loss
    monkeypatch.setattr(trainer, "val_loss", lambda: asked.append(1) or real())
    trainer._rollback(trainer.epoch, Trip(kind="non_finite", loss=float("nan"), reason="loss is NaN"))
    assert len(asked) == 2, "both hosts were scored on validation"
    assert "host kept as it is" in trainer.model.events[-1].reason
