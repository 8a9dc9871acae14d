"""Headroom: does any growth behaviour in the policy's action space beat the heuristic, and does the best one
depend on the task variant?

On TRAINING variants only (:func:`esper.simic.variants.variant` ``"train"``; held-out
ones stay unseen), every arm of :func:`esper.simic.arms.default_arms` (or ``--arms``)
runs every (variant, seed) pair with Simic's episode settings (``--epochs``,
parameter budget ``--budget-ratio`` x the host), through Tolaria's decide step,
in an order rotated per pair so machine noise hits every arm alike. Arms are the
heuristic itself and its alternatives: all slots at once, later onset, no culls,
the static host, and fixed blueprints per slot (``plan-HBB``: conv_heavy in s1,
bottleneck in s2 and s3; letters in :data:`esper.simic.arms.LETTERS`).

Reported (paired with the heuristic on the same variant and seed):

* per arm: median test accuracy and parameters, the median paired difference in test
  accuracy with a bootstrap 95% interval, and the mean difference;
* ``best_fixed``: the one arm with the best mean validation accuracy over all pairs,
  chosen leaving each pair out in turn (its test difference on the pair left out);
* ``best_per_variant``: an arm chosen for each variant by mean validation accuracy on
  that variant's other seeds, scored on the seed left out: the gain a policy that reads
  the variant could reach if it picked as well as validation does;
* per variant: the arm with the best mean test accuracy and its mean margin.

Runs are appended to ``--out`` (JSON lines) and skipped when the file already holds
them, so an interrupted measurement resumes. Every run prints a JSON line; the last
line is the summary.

    .venv/bin/python benchmarks/policy_headroom.py --variants 8 --seeds 3 --out /tmp/headroom.jsonl

``--samples`` (MNIST-1D rows per variant), ``--batch-size`` and ``--epochs`` set the
episodes' regime; ``--out`` keys runs by (arm, variant, seed), so give each regime a
file of its own.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.simic.arms import Arm, arm_named, default_arms
from esper.simic.compare import bootstrap_median, run_with
from esper.simic.env import EnvConfig
from esper.simic.variants import ALL_FAMILIES, FAMILIES, Variant, label_noise, variant

BASELINE = "heuristic"


def load_runs(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(
    arms: list[Arm],
    variants: int,
    seeds: int,
    env: EnvConfig,
    out: Path | None,
    first_seed: int = 0,
    first_variant: int = 0,
    families: tuple[str, ...] = FAMILIES,
) -> list[dict[str, Any]]:
    """Every arm on every (training variant, seed); runs already in ``out`` are not repeated."""
    runs = load_runs(out)
    done = {(r["policy"], r["task"], r["seed"]) for r in runs}
    for index in range(first_variant, first_variant + variants):
        v = variant("train", index, samples=env.samples, families=families)
        for seed in range(first_seed, first_seed + seeds):
            shift = (index + seed) % len(arms)
            for arm in [*arms[shift:], *arms[:shift]]:
                if (arm.name, v.variant_id, seed) in done:
                    continue
                result = asdict(run_with(arm.policy, arm.name, v, seed, env))
                runs.append(result)
                print(json.dumps(result), flush=True)
                if out is not None:
                    with out.open("a") as f:
                        f.write(json.dumps(result) + "\n")
    return runs


def summarize(
    runs: list[dict[str, Any]], arms: list[str], resamples: int = 10_000, baseline: str = BASELINE
) -> dict[str, Any]:
    """The summary of the module docstring over complete (variant, seed) pairs."""
    table: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        if r["policy"] in arms:
            table[(r["task"], r["seed"])][r["policy"]] = r
    pairs = sorted(k for k, row in table.items() if all(a in row for a in arms))
    if not pairs:
        raise ValueError("field 'runs': no (variant, seed) pair has a run of every arm")

    def diff(arm: str, key: str = "test_accuracy") -> np.ndarray:
        return np.array([table[p][arm][key] - table[p][baseline][key] for p in pairs])

    per_arm = {}
    for arm in arms:
        d = diff(arm)
        low, high = bootstrap_median(d, resamples) if arm != baseline else (0.0, 0.0)
        per_arm[arm] = {
            "test_accuracy": round(float(np.median([table[p][arm]["test_accuracy"] for p in pairs])), 4),
            "params": float(np.median([table[p][arm]["params"] for p in pairs])),
            "median_difference": round(float(np.median(d)), 4),
            "mean_difference": round(float(np.mean(d)), 4),
            "ci_low": round(low, 4),
            "ci_high": round(high, 4),
            "wins": int((d > 0).sum()),
            "losses": int((d < 0).sum()),
        }
    # one fixed arm, chosen by validation accuracy leaving each pair out
    fixed = []
    for p in pairs:
        others = [q for q in pairs if q != p]
        best = max(arms, key=lambda a: np.mean([table[q][a]["val_accuracy"] for q in others]))
        fixed.append((best, table[p][best]["test_accuracy"] - table[p][baseline]["test_accuracy"]))
    # an arm per variant, chosen by validation accuracy on that variant's other seeds
    chosen = []
    for task, seed in pairs:
        others = [q for q in pairs if q[0] == task and q[1] != seed]
        if not others:
            continue
        best = max(arms, key=lambda a: np.mean([table[q][a]["val_accuracy"] for q in others]))
        chosen.append(
            (best, table[(task, seed)][best]["test_accuracy"] - table[(task, seed)][baseline]["test_accuracy"])
        )
    per_variant = {}
    for task in sorted({t for t, _ in pairs}):
        mine = [p for p in pairs if p[0] == task]
        means = {a: float(np.mean([table[p][a]["test_accuracy"] for p in mine])) for a in arms}
        ranked = sorted(arms, key=lambda a: -means[a])
        family, _, seed = task.rpartition("-")
        per_variant[task] = {
            "label_noise": round(label_noise(Variant(family, int(seed))), 3),
            "baseline": round(means[baseline], 4),
            "best": ranked[0],
            "best_margin": round(means[ranked[0]] - means[baseline], 4),
            "top3": ranked[:3],
        }

    def selection(picks: list[tuple[str, float]]) -> dict[str, Any]:
        d = np.array([x for _, x in picks])
        low, high = bootstrap_median(d, resamples)
        counts: dict[str, int] = defaultdict(int)
        for arm, _ in picks:
            counts[arm] += 1
        return {
            "median_difference": round(float(np.median(d)), 4),
            "mean_difference": round(float(np.mean(d)), 4),
            "ci_low": round(low, 4),
            "ci_high": round(high, 4),
            "picked": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        }

    return {
        "pairs": len(pairs),
        "arms": per_arm,
        "best_fixed": selection(fixed),
        "best_per_variant": selection(chosen) if chosen else None,
        "per_variant": per_variant,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", type=int, default=8, help="training variants FIRST..FIRST+N-1")
    parser.add_argument("--first-variant", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--arms", default="", help="comma-separated arm names (default: all of default_arms)")
    parser.add_argument("--epochs", type=int, default=EnvConfig().epochs)
    parser.add_argument("--budget-ratio", type=float, default=EnvConfig().param_budget_ratio)
    parser.add_argument(
        "--samples", type=int, default=EnvConfig().samples, help="MNIST-1D rows generated per variant (digits: fixed)"
    )
    parser.add_argument("--batch-size", type=int, default=EnvConfig().batch_size)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of every run (resumes from it)")
    parser.add_argument("--summary-only", action="store_true", help="summarize --out without running anything")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument(
        "--baseline", default=BASELINE, help=f"the arm every difference is taken from (default {BASELINE!r})"
    )
    parser.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated variant families, alternating by variant (of {', '.join(ALL_FAMILIES)})",
    )
    args = parser.parse_args()
    families = tuple(f for f in args.families.split(",") if f)
    unknown = [f for f in families if f not in ALL_FAMILIES]
    if unknown or not families:
        parser.error(f"--families: unknown or no families {unknown or families} (known: {', '.join(ALL_FAMILIES)})")
    torch.set_num_threads(1)
    arms = [arm_named(n) for n in args.arms.split(",") if n] or default_arms()
    if args.baseline not in [a.name for a in arms]:
        arms.insert(0, arm_named(args.baseline))
    env = EnvConfig(
        epochs=args.epochs,
        param_budget_ratio=args.budget_ratio,
        split="train",
        samples=args.samples,
        batch_size=args.batch_size,
    )
    started = time.perf_counter()
    runs = (
        load_runs(args.out)
        if args.summary_only
        else measure(arms, args.variants, args.seeds, env, args.out, args.first_seed, args.first_variant, families)
    )
    summary = summarize(runs, [a.name for a in arms], args.resamples, args.baseline)
    print(
        json.dumps(
            {
                "benchmark": "policy_headroom",
                "split": "train",
                "variants": args.variants,
                "seeds": args.seeds,
                "epochs": args.epochs,
                "samples": args.samples,
                "families": list(families),
                "baseline": args.baseline,
                "batch_size": args.batch_size,
                "seconds": round(time.perf_counter() - started, 1),
                **summary,
            }
        )
    )


if __name__ == "__main__":
    main()
