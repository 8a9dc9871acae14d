import dataclasses
import math

import msgspec
import torch

from esper.leyline import (
    AdaptationCommand,
    CommandAction,
    CommandResult,
    CommandStatus,
    LayerHealth,
    SeedStage,
    TrainingSignals,
)
from esper.tamiyo.policy import StaticPolicy
from esper.tolaria.modes import TrainingMode, training_mode
from esper.tolaria.tasks import Split

from .conftest import comparable, make_trainer


def test_mode_follows_the_slots_stages():
    assert training_mode([SeedStage.DORMANT, SeedStage.FOSSILIZED]) is TrainingMode.NORMAL
    assert training_mode([SeedStage.TRAINING, SeedStage.DORMANT]) is TrainingMode.ISOLATED
    assert training_mode([SeedStage.TRAINING, SeedStage.BLENDING]) is TrainingMode.BLENDED


def test_static_host_learns_and_never_grows(small_task):
    trainer = make_trainer(small_task, epochs=4, policy=StaticPolicy())
    history = trainer.fit()
    assert history[-1].val_loss < history[0].val_loss
    assert history[-1].params == trainer.params_initial == 858
    assert all(r.modes == {"normal": 4} for r in history)


def test_heuristic_run_walks_a_seed_through_the_modes(small_task):
    trainer = make_trainer(small_task, epochs=8)
    trainer.fit()
    modes = set().union(*(r.modes for r in trainer.history))
    assert {"normal", "isolated", "blended"} <= modes
    stages = [e.to_stage for e in trainer.model.events]
    assert stages[:3] == [SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING]
    assert set(trainer.optimizers) >= {"host", "s1"}


def test_isolated_seed_gets_measured_and_the_host_gets_no_gradient_through_it(small_task):
    messages = []
    trainer = make_trainer(small_task, epochs=3)
    trainer.sinks.append(messages.append)
    trainer.fit()
    signals = [m for m in messages if isinstance(m, TrainingSignals)]
    training = [s for sig in signals for s in sig.seeds if s.stage is SeedStage.TRAINING]
    assert training, "the seed reached TRAINING within 3 epochs"
    report = training[-1]
    assert report.improvement is not None and math.isfinite(report.improvement)
    assert report.contribution is not None and report.seed_grad_norm is not None
    assert trainer.model.slot("s1").metrics.isolation_violations == 0
    health = [m for m in messages if isinstance(m, LayerHealth)]
    assert len(health) == 3 and {r.layer for r in health[0].layers} == {"s1:act1", "s2:act2", "s3:act3"}


def test_a_refused_command_is_rejected_with_the_gate_reason_and_a_duplicate_is_ignored(small_task):
    trainer = make_trainer(small_task, epochs=2, policy=StaticPolicy())
    results = []
    trainer.sinks.append(lambda m: results.append(m) if isinstance(m, CommandResult) else None)
    germinate = AdaptationCommand(command_id="g1", action=CommandAction.GERMINATE, slot_id="s2", blueprint="conv_light")
    advance = AdaptationCommand(command_id="a1", action=CommandAction.ADVANCE, slot_id="s2")
    trainer.run_epoch([germinate, germinate])
    trainer.run_epoch([advance, AdaptationCommand(command_id="a2", action=CommandAction.ADVANCE, slot_id="s2")])
    statuses = [(r.command_id, r.status) for r in results]
    assert statuses[:3] == [
        ("g1", CommandStatus.APPLIED),
        ("g1", CommandStatus.DUPLICATE),
        ("a1", CommandStatus.APPLIED),
    ]
    assert statuses[3][1] is CommandStatus.REJECTED and "G2" in results[3].reason
    assert trainer.model.slot("s2").stage is SeedStage.TRAINING


def test_a_command_decided_on_a_stage_the_slot_has_left_is_rejected_as_stale(small_task):
    trainer = make_trainer(small_task, epochs=2, policy=StaticPolicy())
    results = []
    trainer.sinks.append(lambda m: results.append(m) if isinstance(m, CommandResult) else None)
    germinate = AdaptationCommand(command_id="g1", action=CommandAction.GERMINATE, slot_id="s2", blueprint="conv_light")
    # two advances decided on the same GERMINATED telemetry: the second arrives after the first moved the slot on
    decided_on = {"action": CommandAction.ADVANCE, "slot_id": "s2", "expected_stage": SeedStage.GERMINATED, "epoch": 1}
    trainer.run_epoch([germinate])
    trainer.run_epoch(
        [AdaptationCommand(command_id="a1", **decided_on), AdaptationCommand(command_id="a2", **decided_on)]
    )
    assert [r.status for r in results] == [CommandStatus.APPLIED, CommandStatus.APPLIED, CommandStatus.REJECTED]
    assert results[2].reason.startswith("stale: slot 's2' is TRAINING, the command was decided on GERMINATED")
    assert trainer.model.slot("s2").stage is SeedStage.TRAINING


def test_stop_command_ends_the_run(small_task):
    trainer = make_trainer(small_task, epochs=5, policy=StaticPolicy())
    trainer.run_epoch([AdaptationCommand(command_id="stop", action=CommandAction.STOP)])
    trainer.fit()
    assert trainer.epoch == 1


def _without_times(messages):
    out = []
    for m in messages:
        if isinstance(m, TrainingSignals):
            m = msgspec.structs.replace(m, epoch_seconds=0.0)
        out.append(msgspec.to_builtins(m))
    return out


def test_the_test_set_never_steers_signals_or_decisions(small_task):
    permuted = Split(small_task.test.x.flip(0), small_task.test.y[torch.randperm(len(small_task.test))])
    runs = []
    for task in (small_task, dataclasses.replace(small_task, test=permuted)):
        messages = []
        trainer = make_trainer(task, epochs=6)
        trainer.sinks.append(messages.append)
        trainer.fit()
        runs.append((trainer, _without_times(messages)))
    (a, msgs_a), (b, msgs_b) = runs
    assert [r.test_accuracy for r in a.history] != [r.test_accuracy for r in b.history]  # the test set did differ
    assert len(a.model.events) >= 3  # the policy really acted
    assert msgs_a == msgs_b  # every signal, health report, decision, result and transition is the same


def test_the_same_seed_reproduces_the_run_and_another_seed_does_not(small_task):
    a, b, c = (make_trainer(small_task, epochs=3, seed=s) for s in (7, 7, 8))
    for t in (a, b, c):
        t.fit()
    ca, cb, cc = comparable(a), comparable(b), comparable(c)
    assert ca["history"] == cb["history"] and ca["decisions"] == cb["decisions"]
    assert ca["history"] != cc["history"]


def test_layer_health_read_off_the_validation_pass_equals_its_own_forward(small_task):
    # the default eval batch holds the 256 rows health reads: it comes from the validation pass
    fused = make_trainer(small_task, epochs=3)
    own = make_trainer(small_task, epochs=3, eval_batch_size=100)  # too small a first batch: a forward of its own
    reports = {}
    for name, trainer in (("fused", fused), ("own", own)):
        seen = []
        trainer.sinks.append(lambda m, seen=seen: seen.append(m) if isinstance(m, LayerHealth) else None)
        trainer.fit()
        reports[name] = seen
    assert len(reports["fused"]) == len(reports["own"]) == 3
    for a, b in zip(reports["fused"], reports["own"], strict=True):
        assert [r.layer for r in a.layers] == [r.layer for r in b.layers]
        for x, y in zip(a.layers, b.layers, strict=True):
            for field in ("activation_mean", "activation_variance", "dead_ratio", "grad_norm"):
                assert math.isclose(getattr(x, field), getattr(y, field), rel_tol=1e-5, abs_tol=1e-7), field
            assert x.error_count == y.error_count
    assert all(r.activation_variance > 0 for r in reports["fused"][-1].layers)  # real activations were read
