"""Where a run trains: ``TrainerConfig.device`` / ``ESPER_DEVICE`` / ``esper train --device``.

The placement tests run on every device this machine has: the CPU always, and
CUDA where torch can use it (on a GPU machine they are the CUDA path's tests).
"""

import re

import pytest
import torch

from esper.cli.main import main
from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.device import DEVICE_ENV, check_device, configured_device, resolve_device
from esper.tolaria.report import build_report, format_summary
from esper.tolaria.trainer import TrainerConfig

from .conftest import make_trainer

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", *(["cuda"] if CUDA else [])]
no_cuda = pytest.mark.skipif(CUDA, reason="checks what a machine without CUDA does")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_names_are_accepted_without_asking_the_machine(value):
    assert check_device(value) == value


@pytest.mark.parametrize("value", ["gpu", "", "cuda:x", "meta", "mps", "cpu:1", 0, None])
def test_a_malformed_device_is_refused_naming_the_field_and_value(value):
    with pytest.raises(ValueError, match=r"field 'device': must be .*" + re.escape(f"(value {value!r})")):
        check_device(value)
    with pytest.raises(ValueError, match="field 'device'"):
        TrainerConfig(device=value)


@no_cuda
def test_auto_is_the_cpu_without_cuda_and_naming_cuda_there_is_refused():
    assert resolve_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"field 'device': '{value}' but this machine has no CUDA device"):
            resolve_device(value)


@needs_cuda
def test_auto_is_this_process_s_cuda_device_and_a_missing_index_is_refused():
    assert resolve_device("auto") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"'cuda:{count}' but this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


def test_the_process_default_comes_from_esper_device(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert configured_device() == "auto" and TrainerConfig().device == "auto"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert TrainerConfig().device == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match=r"field 'ESPER_DEVICE': must be .*\(value 'tpu'\)"):
        TrainerConfig()


def _placed_on(trainer, device: torch.device) -> list[str]:
    """Every tensor of the run (model, seeds, optimizer state, data) that is not on ``device``."""
    stray = [f"model:{name}" for name, t in trainer.model.state_dict().items() if t.device != device]
    for opt_name, opt in trainer.optimizers.items():
        for state in opt.state.values():
            stray += [
                f"{opt_name}:{k}" for k, v in state.items() if torch.is_tensor(v) and k != "step" and v.device != device
            ]
    for split in ("train", "val", "test"):
        s = getattr(trainer.task, split)
        stray += [f"{split}.{n}" for n, t in (("x", s.x), ("y", s.y)) if t.device != device]
    return stray


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_with_its_seeds_lives_on_its_device(small_task, device):
    trainer = make_trainer(small_task, epochs=4, device=device)
    assert trainer.device == resolve_device(device)
    trainer.fit()
    assert any(slot.seed is not None for slot in trainer.model.slots.values()), "the run grew no seed"
    assert _placed_on(trainer, trainer.device) == []
    assert 0.0 < trainer.history[-1].val_accuracy <= 1.0
    report = build_report(trainer, {})
    assert report["device"] == str(trainer.device)
    assert f"on {trainer.device}" in format_summary(report).splitlines()[0]
    assert small_task.train.x.device == torch.device("cpu")  # the caller's task is not moved
    assert (trainer.task is small_task) == (trainer.device == torch.device("cpu"))


@needs_cuda
def test_a_run_checkpointed_on_cuda_resumes_on_the_cpu(small_task, tmp_path):
    trainer = make_trainer(small_task, epochs=3, device="cuda")
    trainer.fit(stop_after=2)
    save_checkpoint(trainer, tmp_path, meta={})
    resumed = make_trainer(small_task, epochs=3, device="cpu")
    restore_checkpoint(resumed, read_checkpoint(tmp_path))
    assert _placed_on(resumed, torch.device("cpu")) == []
    resumed.fit()
    assert resumed.epoch == 3 and _placed_on(resumed, torch.device("cpu")) == []


@no_cuda
def test_esper_train_refuses_a_cuda_device_here_before_making_a_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert "field 'device': 'cuda' but this machine has no CUDA device" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", "--device", "gpu", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    assert "field 'device': must be 'auto', 'cpu', 'cuda' or 'cuda:N' (value 'gpu')" in capsys.readouterr().err


@no_cuda
@pytest.mark.parametrize(
    ("value", "says"),
    [("cuda", "'cuda' but this machine has no CUDA device"), ("gpu", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")],
)
def test_the_tolaria_service_stops_at_start_on_a_device_it_cannot_use(monkeypatch, value, says):
    import asyncio

    from esper.tolaria.service.__main__ import main as service_main

    monkeypatch.setenv(DEVICE_ENV, value)
    with pytest.raises(SystemExit, match=rf"^tolaria: field 'ESPER_DEVICE': .*{re.escape(says)}"):
        asyncio.run(service_main(["--redis-url", "redis://127.0.0.1:1/0"]))
