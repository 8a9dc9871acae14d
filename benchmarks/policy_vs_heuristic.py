"""The learned Tamiyo against the heuristic on held-out task variants it never trained on.

For each of ``--variants`` held-out variants (:func:`esper.simic.variants.variant`,
seeds disjoint from every training variant) and each of ``--seeds`` run seeds,
one Tolaria run with the heuristic and one with the learned policy, with the
settings of Simic's episodes (``--epochs`` epochs, parameter budget
``--budget-ratio`` x the host's size), both through the trainer's decide step
(policy -> safety monitor -> command), interleaved (:func:`esper.simic.compare.compare`).
The heuristic is the default job's (``TrainingJob().policy``, asked once per
slot), the strongest hand-written rule Esper has; ``--heuristic heuristic``
measures against the one asked once per boundary instead.

Reported per policy: median final test accuracy and median final parameters;
for the paired differences (learned - heuristic, same variant and seed) the
median and a bootstrap 95% interval of it (10,000 resamples). ``beats``: the
interval lies above zero and the learned policy's median parameters are no more
than the heuristic's.

    .venv/bin/python benchmarks/policy_vs_heuristic.py [--policy learned | --policy runs/simic/policy.pt]
        [--heuristic heuristic-per-slot | --heuristic heuristic]

Every run prints a JSON line; the last line is the summary with ``learned``,
``heuristic`` (``test_accuracy``, ``params``, ...), ``heuristic_policy`` (which
rule that was), ``ci_low``, ``ci_high``, ``median_difference`` and ``beats``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from esper.leyline.jobs import TrainingJob
from esper.simic.compare import compare, resolve_tasks
from esper.simic.env import EnvConfig

#: the heuristic a run gets unless told otherwise, so the learned policy is measured against the rule in use
DEFAULT_HEURISTIC = TrainingJob().policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--policy",
        default="learned",
        help="'learned' (the policy Esper ships) or a policy file from 'esper simic train' (policy.pt)",
    )
    parser.add_argument(
        "--heuristic",
        default=DEFAULT_HEURISTIC,
        choices=("heuristic-per-slot", "heuristic"),
        help=f"the rule to beat (default {DEFAULT_HEURISTIC!r}, the default job's)",
    )
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=EnvConfig().epochs)
    parser.add_argument("--budget-ratio", type=float, default=EnvConfig().param_budget_ratio)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument(
        "--sample", action="store_true", help="learned policy draws its actions (seeded) instead of greedy"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = EnvConfig(epochs=args.epochs, param_budget_ratio=args.budget_ratio, split="heldout")
    summary = compare(
        [args.heuristic, args.policy + ("?sample" if args.sample else "")],
        resolve_tasks([f"heldout:{args.variants}"], env.samples),
        args.seeds,
        env,
        resamples=args.resamples,
        on_run=lambda r: print(json.dumps(asdict(r)), flush=True),
    )
    name = args.policy + ("?sample" if args.sample else "")
    learned, heuristic = summary["policies"][name], summary["policies"][args.heuristic]
    diff = summary["differences"][name]
    per_variant: dict[str, dict[str, list[float]]] = {}
    for r in summary["runs"]:
        per_variant.setdefault(r["task"], {}).setdefault(r["policy"], []).append(r["test_accuracy"])
    result = {
        "benchmark": "policy_vs_heuristic",
        "policy": args.policy,
        "sample": args.sample,
        "variants": args.variants,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "runs": len(summary["runs"]),
        "learned": learned,
        "heuristic": heuristic,
        "heuristic_policy": args.heuristic,
        "median_difference": diff["median_difference"],
        "ci_low": diff["ci_low"],
        "ci_high": diff["ci_high"],
        "per_variant_median": {
            task: {("learned" if p == name else "heuristic"): round(sorted(v)[len(v) // 2], 4) for p, v in rows.items()}
            for task, rows in per_variant.items()
        },
        "seconds": summary["seconds"],
        "beats": bool(diff["ci_low"] > 0 and learned["params"] <= heuristic["params"]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
