"""The growth benchmark's verdicts (``benchmarks/growth_summary.py``): paired accuracy differences, the
targets, re-summarizing logs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _growth():
    spec = importlib.util.spec_from_file_location("growth_summary_under_test", BENCHMARKS / "growth_summary.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


growth = _growth()


def _run(arm: str, seed: int, acc: float, seconds: float, params: int = 4998) -> dict:
    return {
        "arm": arm,
        "seed": seed,
        "final_val_accuracy": acc,
        "final_test_accuracy": acc,
        "best_val_accuracy": acc,
        "params_final": params,
        "seconds": seconds,
        "cpu_seconds": seconds,
        "train_flops": 1,
        "seed_events": [],
        "extra": {},
    }


def test_paired_difference_pairs_by_seed_and_bounds_the_median():
    runs = [_run("heuristic", s, 0.95 + d, 10) for s, d in enumerate([0.01, 0.02, 0.0, 0.01, 0.03])]
    runs += [_run("oracle", s, 0.95, 10) for s in range(5)] + [_run("oracle", 9, 0.5, 10)]  # seed 9: unpaired
    diff = growth.paired_difference(runs, "heuristic", "oracle", "final_test_accuracy")
    assert diff["per_seed"] == [0.01, 0.02, 0.0, 0.01, 0.03]
    assert diff["median"] == 0.01
    assert diff["wins"] == 4 and diff["losses"] == 0
    assert 0.0 <= diff["ci95"][0] <= 0.01 <= diff["ci95"][1] <= 0.03
    assert growth.paired_difference(runs, "heuristic", "bare", "final_test_accuracy") is None


def test_targets_follow_the_medians():
    ahead_and_cheap = [_run("heuristic", s, 0.96, 10.5) for s in range(3)] + [
        _run("oracle", s, 0.955, 10) for s in range(3)
    ]
    summary = growth.summarize(["heuristic", "oracle"], ahead_and_cheap)
    assert summary["targets"] == {
        "1_heuristic_at_least_oracle_accuracy": True,
        "2_heuristic_at_most_1.1x_oracle_seconds": True,
    }
    behind_and_slow = [_run("heuristic", s, 0.95, 12) for s in range(3)] + [
        _run("oracle", s, 0.955, 10) for s in range(3)
    ]
    summary = growth.summarize(["heuristic", "oracle"], behind_and_slow)
    assert summary["targets"] == {
        "1_heuristic_at_least_oracle_accuracy": False,
        "2_heuristic_at_most_1.1x_oracle_seconds": False,
    }
    over_budget = [_run("heuristic", s, 0.97, 10, params=growth.BUDGET + 1) for s in range(3)] + [
        _run("oracle", s, 0.955, 10) for s in range(3)
    ]
    assert not growth.summarize(["heuristic", "oracle"], over_budget)["targets"]["1_heuristic_at_least_oracle_accuracy"]


def test_static_target_and_difference():
    runs = [_run("static_5k", s, 0.91, 10.4, 5210) for s in range(2)] + [
        _run("bare", s, 0.91, 10, 5210) for s in range(2)
    ]
    summary = growth.summarize(["static_5k", "bare"], runs)
    assert summary["targets"] == {"3_static_at_most_1.05x_bare_seconds": True}
    assert summary["differences"]["static_5k-bare_final_test_accuracy"]["median"] == 0.0


def test_read_runs_takes_the_run_lines_of_a_log(tmp_path):
    log = tmp_path / "bench.err"
    log.write_text(
        json.dumps({"settings": {}, "arms": ["heuristic"]})
        + "\n"
        + json.dumps(_run("heuristic", 0, 0.9, 1))
        + "\nprogress text\n"
    )
    assert [r["arm"] for r in growth.read_runs(log)] == ["heuristic"]
    empty = tmp_path / "empty.err"
    empty.write_text("nothing\n")
    with pytest.raises(ValueError, match=r"summarize.*empty\.err"):
        growth.read_runs(empty)
    broken = tmp_path / "broken.err"
    broken.write_text('{"arm": "heuristic", \n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        growth.read_runs(broken)


def test_a_late_oracle_run_beside_its_main_run_splits_the_gap_and_counts_repeated_runs_once():
    main = [_run("heuristic", s, 0.95, 10) for s in range(3)] + [_run("oracle", s, 0.96, 10) for s in range(3)]
    late = [_run("heuristic", s, 0.95, 10) for s in range(3)] + [_run("oracle_late", s, 0.955, 10) for s in range(3)]
    summary = growth.summarize(["heuristic", "oracle", "oracle_late"], main + late)
    assert len(summary["heuristic"]["final_test_accuracies"]) == 3  # the repeated heuristic runs count once
    differences = summary["differences"]
    assert differences["oracle_late-oracle_final_test_accuracy"]["median"] == -0.005
    assert differences["heuristic-oracle_late_final_test_accuracy"]["median"] == -0.005
    assert differences["heuristic-oracle_final_test_accuracy"]["median"] == -0.01
    # a late run alone has no oracle: it judges no target
    assert growth.summarize(["heuristic", "oracle_late"], late)["targets"] == {}


def test_summarize_renames_a_logs_arms_and_reports_the_pairs_asked_for(tmp_path):
    defaults, ablation = tmp_path / "defaults.err", tmp_path / "ablation.err"
    defaults.write_text("\n".join(json.dumps(_run("heuristic", s, 0.95, 10)) for s in range(3)) + "\n")
    ablation.write_text("\n".join(json.dumps(_run("heuristic", s, 0.96, 10)) for s in range(3)) + "\n")
    command = [sys.executable, str(BENCHMARKS / "growth.py"), "--summarize", str(defaults)]
    done = subprocess.run(
        [*command, f"{ablation}:heuristic=ablation", "--pair", "ablation,heuristic"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["ablation"]["median_final_test_accuracy"] == 0.96
    assert summary["differences"]["ablation-heuristic_final_test_accuracy"]["median"] == 0.01
    bad = subprocess.run([*command, f"{ablation}:heuristic"], capture_output=True, text=True)
    assert bad.returncode == 2 and "'heuristic' in" in bad.stderr and "is not ARM=NAME" in bad.stderr
