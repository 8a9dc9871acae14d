"""define_task: your model and data as a Tolaria task; references load it for esper train and the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from usertask_fixtures import digits_rows, make_model

from esper.cli.main import main as esper
from esper.leyline import TrainingJob
from esper.tolaria.grow import grow
from esper.tolaria.runs import RunFolder
from esper.tolaria.tasks import load_task
from esper.tolaria.usertask import define_task, load_reference

SLOTS = {"seq": "act", "vec": "proj_act"}


def task_from(train, **kwargs):
    return define_task(model=make_model, train=train, slots=SLOTS, **kwargs)


class Pairs(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def test_validation_and_test_are_carved_with_the_split_seed() -> None:
    x, y = digits_rows()
    a, b, c = task_from((x, y)), task_from((x, y)), task_from((x, y), split_seed=1)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert len(a.train) + len(a.val) + len(a.test) == len(y)
    assert len(a.test) == round(0.2 * len(y)) and len(a.val) == round(0.1 * (len(y) - len(a.test)))


def test_datasets_loaders_and_arrays_give_the_same_task() -> None:
    x, y = digits_rows()
    arrays = task_from((x, y))
    tensors = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    for source in (tensors, DataLoader(tensors, batch_size=7, shuffle=True), Pairs(x, y)):
        task = task_from(source)
        assert torch.equal(task.train.x, arrays.train.x) and torch.equal(task.train.y, arrays.train.y)
        assert task.train.x.dtype == torch.float32 and task.train.y.dtype == torch.int64


def test_given_validation_and_test_are_used_as_they_are() -> None:
    x, y = digits_rows()
    task = task_from((x[:300], y[:300]), val=(x[300:350], y[300:350]), test=(x[350:], y[350:]))
    assert len(task.train) == 300 and torch.equal(task.val.x, torch.as_tensor(x[300:350]))
    assert len(task.test) == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slots": {"seq": "nope"}}, "field 'slots': no such modules"),
        ({"objective": "ranking"}, "field 'objective'"),
        ({"val_fraction": 1.5}, "field 'val_fraction'"),
        ({"model": lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), "slots": {"s": "0"}}, "classes >= 10"),
    ],
)
def test_bad_input_is_refused_naming_the_field(kwargs: dict, message: str) -> None:
    x, y = digits_rows()
    base = {"model": make_model, "train": (x, y), "slots": SLOTS}
    with pytest.raises(ValueError, match=message):
        define_task(**{**base, **kwargs})


def test_fractional_labels_are_refused_for_classification() -> None:
    x, y = digits_rows()
    with pytest.raises(ValueError, match="field 'train': classification needs integer labels"):
        task_from((x, y + 0.5))


@pytest.mark.parametrize(
    ("reference", "kwargs", "message"),
    [
        ("no_such_module_here:make_task", {}, "field 'task': cannot import 'no_such_module_here'"),
        ("usertask_fixtures:missing", {}, "has no 'missing'"),
        ("usertask_fixtures:not_a_task", {}, "returned int, not a Task"),
        ("usertask_fixtures:make_task", {"host_channels": 4}, "field 'host_channels'"),
        ("usertask_fixtures:make_task", {"data_dir": "/data"}, "field 'data_dir'"),
    ],
)
def test_references_that_cannot_load_name_the_field(reference: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_reference(reference, **kwargs)


def test_load_task_loads_references_and_trims_training_rows() -> None:
    task = load_task("usertask_fixtures:make_task", max_train_samples=50)
    assert len(task.train) == 50 and task.slots == SLOTS


def test_regression_trains_with_r2_as_the_score_and_reports_its_metrics(tmp_path: Path) -> None:
    grown = grow("usertask_fixtures:make_regression_task", tmp_path, epochs=6, policy="none", batch_size=32, lr=3e-3)
    report, task = grown.report, grown.trainer.task
    assert report["score"] == "r2" and set(report["test_metrics"]) == {"mae"}
    model = grown.trainer.model.eval()
    with torch.no_grad():
        predicted = model(task.test.x).squeeze(1)
    train_var = float(task.train.y.var(unbiased=False))
    r2 = 1.0 - float(((predicted - task.test.y) ** 2).mean()) / train_var
    assert grown.model_test_score == pytest.approx(r2, abs=1e-5)
    assert r2 > 0.2  # six epochs on a real table learn something; a constant predictor scores ~0
    assert report["test_metrics"]["mae"] == pytest.approx(float((predicted - task.test.y).abs().mean()), abs=1e-6)


def test_a_grown_user_task_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    job = {"epochs": 5, "policy": "heuristic", "batch_size": 32, "lr": 3e-3}
    whole = grow("usertask_fixtures:make_task", tmp_path / "whole", **job)
    first = RunFolder.open(TrainingJob(task="usertask_fixtures:make_task", **job), tmp_path / "split")
    first.trainer.fit(stop_after=2, on_epoch=lambda t, r: first.checkpoint())
    first.close()
    resumed = grow("usertask_fixtures:make_task", tmp_path / "split", resume=True, **job)
    assert [r["val_loss"] for r in resumed.report["history"]] == [r["val_loss"] for r in whole.report["history"]]
    assert resumed.report["seed_events"] == whole.report["seed_events"] and whole.report["seed_events"]


def test_the_service_path_builds_a_run_from_a_reference(tmp_path: Path) -> None:
    folder = RunFolder.open(
        TrainingJob(task="usertask_fixtures:make_task", epochs=1), tmp_path, decide_in_process=False, mode="lockstep"
    )
    try:
        assert folder.trainer.policy is None and set(folder.trainer.model.slots) == set(SLOTS)
        assert folder.trainer.model.slots["seq"].layer_kind == "sequence"
    finally:
        folder.close()


def test_esper_train_runs_a_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "usertask_fixtures:make_task", "--epochs", "2", "--out", str(out), "--no-progress"]
    assert esper(argv) == 0
    assert json.loads((out / "report.json").read_text())["task"] == "usertask_fixtures:make_task"


def test_esper_train_refuses_a_malformed_task_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        esper(["train", "--task", "not-a:ref!"])
    assert "package.module:function" in capsys.readouterr().err


def test_esper_slots_prints_the_table_for_a_model_and_for_a_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert esper(["slots", "usertask_fixtures:make_model", "--input-shape", "8,8"]) == 0
    table = capsys.readouterr().out
    assert "act " in table and "sequence" in table and "attention" in table and "proj_act" in table
    assert esper(["slots", "usertask_fixtures:make_task", "--json"]) == 0
    rows = {r["module"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["act"]["layout"] == "sequence" and rows["proj_act"]["layout"] == "linear"
    assert "head" not in rows  # the model's output is no place for a seed
