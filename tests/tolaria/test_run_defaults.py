from esper.leyline import ACTIVE_STAGES, DecisionAction, SeedStage, TrainingJob
from esper.tolaria.runs import build_trainer


def test_default_heuristic_grows_from_epoch_1_without_waiting_for_a_seed_to_finish():
    trainer = build_trainer(TrainingJob(epochs=4, max_train_samples=200, param_budget=5210))
    trainer.fit()
    germinated = [(e.slot_id, e.epoch) for e in trainer.model.events if e.to_stage is SeedStage.GERMINATED]
    # epoch 1 germinates s1, epoch 2 advances it, epoch 3 germinates s2 while s1 is still live
    assert germinated == [("s1", 1), ("s2", 3)]
    assert sum(SeedStage(s.stage) in ACTIVE_STAGES for s in trainer.model.slots.values()) == 2
    assert "early growth" in next(d.reason for d in trainer.decisions if d.action is DecisionAction.GERMINATE)


def test_default_heuristic_germinates_nothing_past_the_budget():
    trainer = build_trainer(TrainingJob(epochs=3, max_train_samples=200, param_budget=900))
    trainer.fit()
    assert trainer.model.events == [] and trainer.model.param_count() == 858
