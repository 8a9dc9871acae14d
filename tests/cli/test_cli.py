import json

import pytest

from esper.cli.main import main
from esper.tolaria.checkpoint import read_checkpoint


def _train(out, *extra):
    args = ["train", "--epochs", "3", "--seed", "1", "--max-train-samples", "300", "--no-progress", "--out", str(out)]
    return main([*args, *extra])


def test_train_writes_report_events_and_curves(tmp_path, capsys):
    assert _train(tmp_path / "run") == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    described = (report["task"], report["policy"], report["seed"], report["epochs"])
    assert described == ("mnist1d", "heuristic-per-slot", 1, 3)
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "events.jsonl").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_policy_none_trains_the_static_host(tmp_path):
    assert _train(tmp_path / "static", "--policy", "none") == 0
    report = json.loads((tmp_path / "static" / "report.json").read_text())
    assert report["params_initial"] == report["params_final"] == 858 and report["seed_events"] == []


@pytest.mark.parametrize("extra", [["--isolate-seeds"], []], ids=["isolated", "joint"])
def test_resume_continues_to_the_same_numbers(tmp_path, extra):
    common = ["--lr-schedule", "constant", *extra]
    assert (
        main(
            [
                "train",
                "--epochs",
                "4",
                "--max-train-samples",
                "300",
                "--no-progress",
                "--out",
                str(tmp_path / "straight"),
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--epochs",
                "2",
                "--max-train-samples",
                "300",
                "--no-progress",
                "--out",
                str(tmp_path / "split"),
                *common,
            ]
        )
        == 0
    )
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "4", "--no-progress"]) == 0
    assert read_checkpoint(tmp_path / "split")["meta"]["isolate_seeds"] is bool(extra)
    a = json.loads((tmp_path / "straight" / "report.json").read_text())
    b = json.loads((tmp_path / "split" / "report.json").read_text())
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]  # noqa: E731
    assert b["epochs"] == 4 and strip(a["history"]) == strip(b["history"])
    assert a["seed_events"] == b["seed_events"]
    lines_a = (tmp_path / "straight" / "events.jsonl").read_text().count("\n")
    assert (tmp_path / "split" / "events.jsonl").read_text().count("\n") == lines_a


def test_report_prints_a_summary(tmp_path, capsys):
    _train(tmp_path / "run")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run: task mnist1d, policy heuristic-per-slot, seed 1, 3 epochs" in out and "parameters: 858 ->" in out


def test_cifar10_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--task", "cifar10", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_unknown_policy_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--policy", "random"])
    err = capsys.readouterr().err
    assert "must be one of heuristic, heuristic-per-slot, none, learned or a policy file PATH.pt" in err
