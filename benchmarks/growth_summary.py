"""The growth benchmark's results, summarized: per-arm medians, time ratios, paired accuracy differences
with bootstrap intervals, and issue 9's targets judged on them (``benchmarks/growth.py`` prints this; its
``--summarize`` applies it to earlier runs' logs)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

#: The parameter budget the grown network must stay within (target 1).
BUDGET = 5210


def _ratios(results: list[dict[str, Any]], num: str, den: str, key: str) -> list[float]:
    by_seed = {(r["arm"], r["seed"]): r[key] for r in results}
    seeds = sorted({r["seed"] for r in results})
    return [round(by_seed[num, s] / by_seed[den, s], 3) for s in seeds if (num, s) in by_seed and (den, s) in by_seed]


def paired_difference(
    results: list[dict[str, Any]], num: str, den: str, key: str, *, resamples: int = 10_000
) -> dict[str, Any] | None:
    """``num`` minus ``den`` in ``key``, paired by seed: per seed, the median, and a bootstrap 95% interval
    of the median (resampling seeds; fixed generator, so the same runs give the same interval)."""
    by_seed = {(r["arm"], r["seed"]): r[key] for r in results}
    seeds = sorted({r["seed"] for r in results if (num, r["seed"]) in by_seed and (den, r["seed"]) in by_seed})
    if not seeds:
        return None
    diffs = np.array([by_seed[num, s] - by_seed[den, s] for s in seeds])
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(diffs, size=(resamples, len(diffs))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return {
        "median": round(float(np.median(diffs)), 4),
        "ci95": [round(float(low), 4), round(float(high), 4)],
        "per_seed": [round(float(d), 4) for d in diffs],
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
    }


def read_runs(log: Path) -> list[dict[str, Any]]:
    """The per-run records a benchmark run printed on stderr (its ``{"arm": ...}`` lines)."""
    runs = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        if line.startswith('{"arm"'):
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"field 'summarize': {str(log)!r} line {number} is not JSON: {exc}") from None
    if not runs:
        raise ValueError(f"field 'summarize': {str(log)!r} holds no run records (lines starting with '{{\"arm\"')")
    return runs


def read_renamed(item: str) -> list[dict[str, Any]]:
    """``LOG`` or ``LOG:ARM=NAME,...``: the log's run records, arms renamed as asked."""
    path, _, spec = item.partition(":")
    renames = {}
    for part in filter(None, spec.split(",")):
        arm, eq, name = part.partition("=")
        if not eq or not arm or not name:
            raise ValueError(f"field 'summarize': {part!r} in {item!r} is not ARM=NAME")
        renames[arm] = name
    return [{**r, "arm": renames.get(r["arm"], r["arm"])} for r in read_runs(Path(path))]


def pair(text: str) -> tuple[str, str]:
    """``NUM,DEN`` (``--pair``): the two arm names."""
    num, comma, den = text.partition(",")
    if not comma or not num or not den or "," in den:
        raise ValueError(f"field 'pair': {text!r} is not NUM,DEN")
    return num, den


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 9's three targets, judged on this run's medians (only those whose arms ran)."""
    verdicts: dict[str, Any] = {}
    ratios = summary["ratios"]
    if "heuristic" in summary and "oracle" in summary:
        grown, oracle = summary["heuristic"], summary["oracle"]
        verdicts["1_heuristic_at_least_oracle_accuracy"] = (
            grown["median_final_test_accuracy"] >= oracle["median_final_test_accuracy"]
            and grown["median_params_final"] <= BUDGET
        )
        verdicts["2_heuristic_at_most_1.1x_oracle_seconds"] = ratios["heuristic/oracle_seconds"]["median"] <= 1.1
    if "static_5k/bare_seconds" in ratios:
        verdicts["3_static_at_most_1.05x_bare_seconds"] = ratios["static_5k/bare_seconds"]["median"] <= 1.05
    return verdicts


#: pairs whose paired accuracy difference the summary reports, when both arms ran (num - den)
DIFFERENCES = (("heuristic", "oracle"), ("static_5k", "bare"), ("oracle_late", "oracle"), ("heuristic", "oracle_late"))


def summarize(
    arms: list[str], results: list[dict[str, Any]], pairs: list[tuple[str, str]] | tuple[()] = ()
) -> dict[str, Any]:
    """Per arm medians and per-seed lists, the time ratios, the paired differences and the targets.

    A run that appears twice (the same arm and seed in two logs: the heuristic runs of a ``--oracle-late``
    run beside the run they repeat) counts once, the first time. ``pairs``: more (num, den) differences.
    """
    unique: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        unique.setdefault((r["arm"], r["seed"]), r)
    results = list(unique.values())
    summary: dict[str, Any] = {}
    for arm in arms:
        runs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        summary[arm] = {
            "median_final_val_accuracy": statistics.median(r["final_val_accuracy"] for r in runs),
            "median_final_test_accuracy": statistics.median(r["final_test_accuracy"] for r in runs),
            "median_params_final": statistics.median(r["params_final"] for r in runs),
            "final_val_accuracies": [round(r["final_val_accuracy"], 4) for r in runs],
            "final_test_accuracies": [round(r["final_test_accuracy"], 4) for r in runs],
            "params_final": [r["params_final"] for r in runs],
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
            "seconds": [r["seconds"] for r in runs],
            "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
            "median_train_flops": statistics.median(r["train_flops"] for r in runs),
        }
    ratios = {}
    for num, den in (("heuristic", "oracle"), ("static_5k", "bare")):
        for key in ("seconds", "cpu_seconds"):
            values = _ratios(results, num, den, key)
            if values:
                ratios[f"{num}/{den}_{key}"] = {"median": statistics.median(values), "per_seed": values}
    flops = {}
    if "heuristic" in summary and "oracle" in summary:
        flops["heuristic/oracle_train_flops"] = round(
            summary["heuristic"]["median_train_flops"] / summary["oracle"]["median_train_flops"], 3
        )
    summary["ratios"] = {**ratios, **flops}
    for num, den in (*DIFFERENCES, *pairs):
        difference = paired_difference(results, num, den, "final_test_accuracy")
        if difference is not None:
            summary.setdefault("differences", {})[f"{num}-{den}_final_test_accuracy"] = difference
    summary["targets"] = targets(summary)
    return summary
