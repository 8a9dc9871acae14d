from esper.leyline import DecisionAction, SeedStage, TrainingJob
from esper.tolaria.runs import build_trainer


def test_the_default_job_grows_every_slot_at_the_first_boundary_one_decision_per_slot():
    trainer = build_trainer(TrainingJob(epochs=2, max_train_samples=200, param_budget=5210))
    assert trainer.policy is not None and trainer.policy.slotwise  # policy heuristic-per-slot
    trainer.fit()
    germinated = [(e.slot_id, e.epoch) for e in trainer.model.events if e.to_stage is SeedStage.GERMINATED]
    assert germinated == [("s1", 1), ("s2", 1), ("s3", 1)]
    first = [d for d in trainer.decisions if d.epoch == 1]
    assert [(d.index, d.count, d.decision_id) for d in first] == [
        (0, 3, "heuristic-e1"), (1, 3, "heuristic-e1.1"), (2, 3, "heuristic-e1.2")
    ]  # fmt: skip
    assert "early growth" in next(d.reason for d in trainer.decisions if d.action is DecisionAction.GERMINATE)


def test_the_heuristic_asked_once_per_boundary_grows_one_slot_at_a_time():
    trainer = build_trainer(TrainingJob(epochs=4, max_train_samples=200, param_budget=5210, policy="heuristic"))
    trainer.fit()
    germinated = [(e.slot_id, e.epoch) for e in trainer.model.events if e.to_stage is SeedStage.GERMINATED]
    # epoch 1 germinates s1, epoch 2 advances it, epoch 3 germinates s2 while s1 is still live
    assert germinated == [("s1", 1), ("s2", 3)]
    assert all((d.index, d.count) == (0, 1) for d in trainer.decisions)


def test_default_heuristic_germinates_nothing_past_the_budget():
    trainer = build_trainer(TrainingJob(epochs=3, max_train_samples=200, param_budget=900))
    trainer.fit()
    assert trainer.model.events == [] and trainer.model.param_count() == 858


def test_the_default_job_builds_joint_slots_whose_seeds_never_take_the_isolated_pass():
    joint = build_trainer(TrainingJob(epochs=4, max_train_samples=200, param_budget=5210))
    assert not any(slot.isolate for slot in joint.model.slots.values())
    joint.fit()
    records = joint.history
    assert not any(r.modes.get("isolated") for r in records) and any(r.modes.get("blended") for r in records)
    isolated = build_trainer(TrainingJob(epochs=4, max_train_samples=200, param_budget=5210, isolate_seeds=True))
    assert all(slot.isolate for slot in isolated.model.slots.values())
    isolated.fit()
    assert any(r.modes.get("isolated") for r in isolated.history)
