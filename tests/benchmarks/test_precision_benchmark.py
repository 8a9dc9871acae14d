"""``benchmarks/precision.py``: fp32 and bf16 runs paired by seed, the ratio and the paired difference printed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_each_seed_runs_both_precisions_and_the_summary_pairs_them(capsys):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("precision_benchmark_under_test", BENCHMARKS / "precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--seeds", "2", "--epochs", "2", "--max-train-samples", "300", "--device", "cpu"])
    assert summary["device"] == "cpu" and len(summary["runs"]) == 2
    for run in summary["runs"]:
        assert run["wall_ratio"] == run["bf16"]["wall_s"] / run["fp32"]["wall_s"]
        assert run["same_params"] == (run["fp32"]["params"] == run["bf16"]["params"])
    same = [r["wall_ratio"] for r in summary["runs"] if r["same_params"]]
    assert summary["pairs_same_network"] == len(same)
    per_seed = [round(r["bf16"]["test_accuracy"] - r["fp32"]["test_accuracy"], 4) for r in summary["runs"]]
    assert summary["bf16_minus_fp32"]["per_seed"] == per_seed
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == json.loads(json.dumps(summary))
