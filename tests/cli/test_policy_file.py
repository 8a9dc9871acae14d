"""``esper train --policy PATH`` and ``esper compare``: a learned policy file Simic wrote, run in process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from esper.cli.main import main
from esper.leyline import TrainingJob
from esper.tamiyo.policies import PolicyUnavailable, check_policy, make_policy

pytest.importorskip("torch_geometric")

from esper.simic.train import POLICY, train
from esper.tamiyo.gnn.policy import GNNTamiyo


def _simic_tiny():
    """``tests/simic/tiny.py`` (another test directory: loaded by path, as the import mode has no ``tests``
    package)."""
    spec = importlib.util.spec_from_file_location("simic_tiny_for_cli", Path(__file__).parents[1] / "simic" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The tiny Simic job the Simic tests train (seconds).
TINY = _simic_tiny().TINY


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy file written by a (tiny) Simic training job: record, offline, PPO."""
    out = tmp_path_factory.mktemp("simic")
    train(TINY, out, progress=False)
    return out / POLICY


def _train(out: Path, *extra: str) -> int:
    args = ["train", "--epochs", "3", "--seed", "1", "--max-train-samples", "300", "--no-progress", "--out", str(out)]
    return main([*args, *extra])


def _decisions(run: Path) -> list[dict]:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "adaptation_decision"]


def test_train_runs_the_policy_file_in_process_and_resumes_with_it(policy_file, tmp_path):
    run = tmp_path / "run"
    assert _train(run, "--policy", str(policy_file), "--epochs", "2") == 0
    decisions = _decisions(run)
    assert [d["epoch"] for d in decisions] == [1, 2]
    assert {d["policy"] for d in decisions} == {"gnn"}  # the learned policy decided, not the heuristic
    assert all(d["reason"].startswith("gnn: ") for d in decisions)
    report = json.loads((run / "report.json").read_text())
    assert report["policy"] == str(policy_file)
    # the run's checkpoint names the file: --resume loads it again and keeps deciding with it
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert [(d["epoch"], d["policy"]) for d in _decisions(run)] == [(1, "gnn"), (2, "gnn"), (3, "gnn")]


def test_the_default_run_folder_is_named_after_the_policy_file(policy_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--epochs", "2", "--max-train-samples", "200", "--no-progress", "--policy", str(policy_file)]
    assert main(args) == 0
    assert (tmp_path / "runs" / "mnist1d-policy-s0" / "report.json").is_file()


def test_a_missing_policy_file_is_a_clear_error_naming_the_field_and_path(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "policy.pt"
    assert _train(tmp_path / "run", "--policy", str(missing)) == 2
    err = capsys.readouterr().err
    assert "field 'policy'" in err and str(missing) in err and "does not exist" in err
    assert not (tmp_path / "run").exists()  # refused before the run's folder was made


@pytest.mark.parametrize("content", [b"not a torch file at all", b""], ids=["garbage", "empty"])
def test_a_corrupt_policy_file_is_a_clear_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert _train(tmp_path / "run", "--policy", str(bad)) == 2
    err = capsys.readouterr().err
    assert "field 'policy'" in err and str(bad) in err and "not a readable policy file" in err


def test_a_torch_file_without_a_network_is_refused(tmp_path):
    import torch

    other = tmp_path / "weights.pt"
    torch.save({"something": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"field 'policy'.*not a GNN policy file"):
        make_policy(str(other), TrainingJob())


def test_policy_names_and_modes_are_checked_without_loading(policy_file):
    check_policy("heuristic")
    check_policy(str(policy_file))
    check_policy(f"{policy_file}?sample")
    with pytest.raises(ValueError, match="field 'policy': unknown mode 'argmax'"):
        check_policy(f"{policy_file}?argmax")
    with pytest.raises(ValueError, match="field 'policy': unknown policy 'random'"):
        check_policy("random")


def test_the_job_sets_the_loaded_policys_run_settings(policy_file):
    policy = make_policy(f"{policy_file}?sample", TrainingJob(epochs=7, param_budget=5000, seed=3))
    assert isinstance(policy, GNNTamiyo)
    assert (policy.config.epochs_total, policy.config.param_budget) == (7, 5000)
    assert (policy.config.sample, policy.config.sample_seed) == (True, 3)


def test_without_the_gnn_extra_a_policy_file_names_the_missing_extra(policy_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "esper.tamiyo.gnn.policy", None)  # import fails as without torch
    with pytest.raises(PolicyUnavailable, match=r"needs the gnn extra \(pip install 'esper-tamiyo\[gnn\]'\)"):
        make_policy(str(policy_file), TrainingJob())


def test_compare_prints_a_table_and_json_with_intervals_for_every_metric(policy_file, tmp_path, capsys):
    out = tmp_path / "compare.json"
    args = ["compare", "--policies", f"none,{policy_file}", "--tasks", "digits-900001,digits", "--seeds", "2"]
    args += ["--epochs", "2", "--max-train-samples", "100", "--resamples", "200", "--json", str(out), "--quiet"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary["policies"]) == {"none", str(policy_file)}
    row = summary["policies"][str(policy_file)]
    assert {"test_accuracy", "params", "accuracy_per_kparam", "wall_seconds"} <= row.keys()
    diff = summary["differences"][str(policy_file)]
    assert diff["against"] == "none"
    assert set(diff["metrics"]) == {"test_accuracy", "params", "accuracy_per_kparam", "wall_seconds"}
    for d in diff["metrics"].values():
        assert d["ci_low"] <= d["median_difference"] <= d["ci_high"]
        assert d["holds"] == (d["ci_low"] > 0 or d["ci_high"] < 0)
    stored = json.loads(out.read_text())
    pairs = {(t, s) for t in ("digits-900001", "digits") for s in (0, 1)}
    assert {(r["task"], r["seed"]) for r in stored["runs"]} == pairs
    assert len(stored["runs"]) == 8
    assert "baseline" in lines[1] and any("holds" in line or "not significant" in line for line in lines)


def test_compare_refuses_a_missing_policy_file_before_any_run(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["compare", "--policies", f"heuristic,{missing}", "--tasks", "digits"]) == 2
    err = capsys.readouterr().err
    assert "field 'policies'" in err and str(missing) in err


def test_compare_refuses_an_unknown_task_naming_the_field(capsys):
    assert main(["compare", "--policies", "heuristic,none", "--tasks", "imagenet-1k"]) == 2
    assert "field 'tasks'" in capsys.readouterr().err


def test_the_shipped_learned_policy_runs_by_name_in_a_folder_named_after_it(tmp_path, monkeypatch):
    from esper.tamiyo.policies import SHIPPED_POLICIES

    assert SHIPPED_POLICIES["learned"].is_file()  # package data: installed with esper-tamiyo
    check_policy("learned")
    check_policy("learned?sample")
    with pytest.raises(ValueError, match="field 'policy': unknown mode 'argmax'"):
        check_policy("learned?argmax")
    policy = make_policy("learned?sample", TrainingJob(epochs=7, param_budget=5000, seed=3))
    assert isinstance(policy, GNNTamiyo) and policy.config.sample and policy.config.epochs_total == 7
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "2", "--max-train-samples", "200", "--no-progress", "--policy", "learned"]) == 0
    run = tmp_path / "runs" / "mnist1d-learned-s0"
    assert {d["policy"] for d in _decisions(run)} == {"gnn"}
    assert json.loads((run / "report.json").read_text())["policy"] == "learned"
