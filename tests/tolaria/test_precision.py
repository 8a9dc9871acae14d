"""A run's precision: ``fp32`` throughout, or ``bf16`` autocast on the forward passes (``esper.tolaria.precision``).

The bf16 tests run on every device this machine has (the CPU always; CUDA where
torch can use it, where they are the GPU path's tests).
"""

import re

import msgspec
import numpy as np
import pytest
import torch

from esper.cli.main import main, parser
from esper.cli.runs import _submit_body
from esper.leyline import TrainingJob
from esper.tolaria import usertask
from esper.tolaria.precision import autocast_for, check_precision
from esper.tolaria.report import build_report, format_summary
from esper.tolaria.runs import job_from_dict
from esper.tolaria.trainer import TrainerConfig

from .conftest import make_trainer

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("value", ["fp16", "bfloat16", "", None, 16])
def test_an_unknown_precision_is_refused_naming_the_field_and_value(value):
    with pytest.raises(ValueError, match=re.escape(f"field 'precision': must be one of fp32, bf16 (value {value!r})")):
        check_precision(value)
    with pytest.raises(ValueError, match="field 'precision'"):
        TrainerConfig(precision=value)


def test_the_job_carries_the_precision_and_refuses_others():
    assert TrainingJob().precision == "fp32"
    assert job_from_dict({"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValueError, match=re.escape("training job: Invalid enum value 'fp16' - at `$.precision`")):
        job_from_dict({"precision": "fp16"})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.precision"):
        msgspec.convert({"precision": "half"}, TrainingJob)


def _forward_dtypes(trainer) -> list[torch.dtype]:
    """The dtype of every output of the host's classifier head and of every seed from now on."""
    seen: list[torch.dtype] = []
    head = [m for m in trainer.model.host.modules() if isinstance(m, torch.nn.Linear)][-1]
    head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def _seed_dtypes(trainer) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for slot in trainer.model.slots.values():
        if slot.seed is not None:
            slot.seed.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_run_computes_its_forward_passes_in_bfloat16_and_keeps_float32_state(small_task, device):
    trainer = make_trainer(small_task, epochs=4, device=device, precision="bf16")
    trainer.fit(stop_after=1)  # seeds germinate at the first boundary (the eager heuristic)
    head, seeds = _forward_dtypes(trainer), _seed_dtypes(trainer)
    assert seeds == [] and any(slot.seed is not None for slot in trainer.model.slots.values())
    trainer.fit()
    # training steps, isolated passes, validation, test and the seed measurements: all under autocast
    assert head and set(head) - {torch.float32} == {torch.bfloat16}
    assert head.count(torch.float32) <= trainer.epoch  # GradMax's pass, once per epoch a seed is GERMINATED
    assert seeds and set(seeds) == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    for optimizer in trainer.optimizers.values():
        for state in optimizer.state.values():
            assert {v.dtype for k, v in state.items() if torch.is_tensor(v) and k != "step"} == {torch.float32}
    assert all(np.isfinite([r.train_loss, r.val_loss]).all() for r in trainer.history)
    report = build_report(trainer, {})
    assert report["precision"] == "bf16" and "bf16 autocast" in format_summary(report).splitlines()[0]
    with torch.no_grad():
        logits = trainer.model(trainer.task.val.x[:4])
    assert logits.dtype == torch.float32  # outside the run's passes the model is float32 as ever


def test_fp32_runs_no_autocast(small_task):
    trainer = make_trainer(small_task, epochs=2)
    assert trainer.config.precision == "fp32"
    head = _forward_dtypes(trainer)
    trainer.fit()
    assert head and set(head) == {torch.float32}
    report = build_report(trainer, {})
    assert report["precision"] == "fp32" and "autocast" not in format_summary(report)


def test_bf16_changes_the_arithmetic_but_not_what_the_run_learns(small_task):
    runs = {p: make_trainer(small_task, epochs=15, precision=p) for p in ("fp32", "bf16")}
    for trainer in runs.values():
        trainer.fit()
    fp32, bf16 = (runs[p].history[-1] for p in ("fp32", "bf16"))
    assert fp32.train_loss != bf16.train_loss
    # 10 classes: both learn (36% and 37% on this seed), and to within a few rows of 200
    assert min(fp32.val_accuracy, bf16.val_accuracy) > 0.25
    assert abs(fp32.val_accuracy - bf16.val_accuracy) < 0.08, (fp32.val_accuracy, bf16.val_accuracy)


def test_user_metrics_get_float32_outputs_from_a_bf16_run():
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    task = usertask.define_task(
        model=lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
        train=(x, y),
        slots={"s1": "1"},
        metrics={"numpy_mean": lambda out, _t: float(out.numpy().mean())},  # numpy has no bfloat16
    )
    model = task.build_host()
    autocast = autocast_for("bf16", torch.device("cpu"))
    with autocast():
        assert model(task.test.x).dtype == torch.bfloat16
    metrics = usertask.test_metrics(model, task, autocast=autocast)
    assert np.isfinite(metrics["numpy_mean"])


def test_cuda_without_bfloat16_is_refused_naming_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "Tesla V100")
    with pytest.raises(ValueError, match=r"field 'precision': 'bf16' but cuda:0 \(Tesla V100\) has no bfloat16"):
        autocast_for("bf16", torch.device("cuda", 0))
    assert autocast_for("fp32", torch.device("cuda", 0))().__enter__() is None  # fp32 asks nothing of the device


def test_the_cli_passes_the_precision_on():
    args = parser().parse_args(["train", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert parser().parse_args(["train"]).precision == "fp32"
    submit = parser().parse_args(["runs", "submit", "--precision", "bf16"])
    assert _submit_body(submit)["precision"] == "bf16"
    assert "precision" not in _submit_body(parser().parse_args(["runs", "submit"]))


def test_esper_train_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--precision", "fp16"])
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_bf16_run_resumes_exactly_and_in_bf16(tmp_path):
    from esper.tolaria.runs import run

    job = TrainingJob(epochs=4, max_train_samples=300, precision="bf16", seed=2)
    straight = run(job, tmp_path / "straight", progress=False)
    run(job, tmp_path / "resumed", progress=False, stop_after=2)
    # the precision is the run's: a resume takes it from the checkpoint, whatever the job given says
    resumed = run(TrainingJob(epochs=4), tmp_path / "resumed", progress=False, resume=True)
    assert straight["precision"] == resumed["precision"] == "bf16"
    strip = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in straight["history"]]
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in resumed["history"]] == strip
    assert resumed["params_final"] > resumed["params_initial"]
