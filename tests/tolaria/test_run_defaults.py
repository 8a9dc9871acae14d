from esper.leyline import SeedStage, TrainingJob
from esper.tolaria.runs import build_trainer


def test_default_heuristic_grows_every_slot_from_epoch_1_side_by_side():
    trainer = build_trainer(TrainingJob(epochs=3, max_train_samples=200, param_budget=5210))
    trainer.fit()
    germinated = [(e.slot_id, e.epoch) for e in trainer.model.events if e.to_stage is SeedStage.GERMINATED]
    # one decision per slot at a boundary: epoch 1 germinates all three, epoch 2 advances all three
    assert germinated == [("s1", 1), ("s2", 1), ("s3", 1)]
    assert [SeedStage(s.stage) for s in trainer.model.slots.values()] == [SeedStage.TRAINING] * 3
    first = [d for d in trainer.decisions if d.epoch == 1]
    assert [(d.index, d.count, d.decision_id) for d in first] == [
        (0, 3, "heuristic-e1"), (1, 3, "heuristic-e1.1"), (2, 3, "heuristic-e1.2")
    ]  # fmt: skip
    assert "early growth" in first[0].reason


def test_default_heuristic_germinates_nothing_past_the_budget():
    trainer = build_trainer(TrainingJob(epochs=3, max_train_samples=200, param_budget=900))
    trainer.fit()
    assert trainer.model.events == [] and trainer.model.param_count() == 858
