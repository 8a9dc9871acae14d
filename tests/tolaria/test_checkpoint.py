import dataclasses

import pytest
import torch

from esper.leyline import SeedStage
from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.trainer import Trainer, TrainerConfig

from .conftest import FAST_KASMINA, comparable, eager_heuristic, make_trainer


def _assert_same(a: dict, b: dict) -> None:
    assert a["history"] == b["history"]
    assert a["decisions"] == b["decisions"]
    assert a["events"] == b["events"]
    assert a["params"] == b["params"]
    assert a["weights"].keys() == b["weights"].keys()
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name


def test_six_epochs_equal_three_plus_resume_plus_three(small_task, tmp_path):
    straight = make_trainer(small_task, epochs=6, seed=3)
    straight.fit()
    assert any(e.epoch <= 3 for e in straight.model.events), "a seed lives across the resume point"

    first = make_trainer(small_task, epochs=6, seed=3)
    first.fit(stop_after=3)
    path = save_checkpoint(first, tmp_path, meta={"note": "test"})
    del first
    resumed = make_trainer(small_task, epochs=6, seed=3)
    state = read_checkpoint(tmp_path)
    assert state["meta"] == {"note": "test"} and state["epoch"] == 3
    restore_checkpoint(resumed, state)
    resumed.fit()
    assert path.name == "checkpoint.pt"
    _assert_same(comparable(straight), comparable(resumed))


def test_a_format_1_checkpoint_of_an_older_build_still_resumes_exactly(small_task, tmp_path):
    straight = make_trainer(small_task, epochs=5, seed=4)
    straight.fit()
    first = make_trainer(small_task, epochs=5, seed=4)
    first.fit(stop_after=2)
    state = read_checkpoint(save_checkpoint(first, tmp_path))
    assert state["decisions"] and state["history"]
    # the layout format 1 wrote: one torch.save of everything, decisions as dicts
    old = {**state, "format": 1, "decisions": [d.to_dict() for d in state["decisions"]]}
    old.pop("quiet_boundary")  # builds of format 1 had no such field
    torch.save(old, tmp_path / "checkpoint.pt")
    resumed = make_trainer(small_task, epochs=5, seed=4)
    restore_checkpoint(resumed, read_checkpoint(tmp_path))
    resumed.fit()
    _assert_same(comparable(straight), comparable(resumed))
    torch.save({**old, "format": 7}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"'format'.* 7"):
        read_checkpoint(tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_checkpoint(tmp_path / "nothing-here")


def test_a_joint_seeds_mark_of_the_host_survives_a_resume(small_task, tmp_path):
    kasmina = dataclasses.replace(FAST_KASMINA, isolate_seeds=False)
    first = Trainer(small_task, eager_heuristic(), TrainerConfig(epochs=6, seed=3), kasmina=kasmina)
    while first.model.slot("s1").stage is not SeedStage.TRAINING:
        first.run_epoch()
    joined = {k: v.clone() for k, v in first.model.host.state_dict().items()}
    first.run_epoch()  # the host learns on with the seed
    assert first.model.slot("s1").stage is not SeedStage.FOSSILIZED
    save_checkpoint(first, tmp_path)
    resumed = Trainer(small_task, eager_heuristic(), TrainerConfig(epochs=6, seed=3), kasmina=kasmina)
    restore_checkpoint(resumed, read_checkpoint(tmp_path))
    assert set(resumed.model.host_marks) == {"s1"}
    for trainer in (first, resumed):
        assert any(not torch.equal(v, joined[k]) for k, v in trainer.model.host.state_dict().items())
        trainer.model.cull("s1", epoch=trainer.epoch, reason="test")
        for name, value in trainer.model.host.state_dict().items():
            assert torch.equal(value, joined[name]), name
