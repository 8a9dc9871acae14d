"""Search, then distill (expert iteration): clone the growth behaviour that search found best on each training
variant into the GNN policy, with the offline learner PPO fine-tunes.

1. Search (``benchmarks/policy_headroom.py``): every arm of :mod:`esper.simic.arms`
   on training variants x seeds, results as JSON lines.
2. Choose (:func:`best_arms`): per variant, the ``top`` arms by mean *validation*
   accuracy over the searched seeds (test accuracy is never looked at).
3. Record (:func:`esper.simic.demos.record_demonstrations`): the chosen arms
   (and, with ``contrast``, the heuristic too) rerun on those variants and seeds,
   recorded as the GNN policy would have seen and decided each step; every
   episode's return (undiscounted) is its own final validation accuracy less the
   parameter rent.
4. Clone (:func:`esper.simic.offline.train_offline`): advantage-weighted,
   class-balanced behaviour cloning on a fresh :class:`TamiyoNetwork` (the same
   network ``esper simic train`` builds), so where several arms ran on a variant
   the one that paid more weighs more. The policy is ``OUT/policy.pt``.

    .venv/bin/python -m esper.simic.distill --headroom runs/headroom.jsonl --out runs/distill
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.simic.arms import Arm, arm_named
from esper.simic.compare import resolve_tasks
from esper.simic.demos import record_demonstrations
from esper.simic.env import EnvConfig
from esper.simic.offline import OfflineConfig, save_transitions, train_offline
from esper.simic.variants import Variant
from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

#: The shipped distilled policy (README: how it was trained and what it reached on held-out variants).
DISTILLED_POLICY = Path(__file__).parent / "policies" / "distilled-per-slot.pt"


def best_arms(runs: list[dict[str, Any]], top: int = 1) -> dict[str, list[str]]:
    """Per variant of ``runs`` (headroom JSON lines), the ``top`` arms by mean validation accuracy, best first.

    Only arms with a run on every searched seed of the variant compete (a partial search is not favoured).
    """
    if top < 1:
        raise ValueError(f"field 'top': must be >= 1 (value {top!r})")
    by_variant: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        by_variant[r["task"]][r["policy"]][r["seed"]] = r["val_accuracy"]
    chosen = {}
    for task, arms in sorted(by_variant.items()):
        seeds = set().union(*(set(s) for s in arms.values()))
        complete = {arm: np.mean(list(s.values())) for arm, s in arms.items() if set(s) == seeds}
        chosen[task] = sorted(complete, key=lambda a: (-complete[a], a))[:top]
    return chosen


def demonstration_plan(
    chosen: dict[str, list[str]], seeds: list[int], *, samples: int, contrast: str | None = "heuristic"
) -> list[tuple[Arm, Variant, int]]:
    """Every chosen arm (and the ``contrast`` arm, once) on its variant for every seed."""
    plan = []
    for task, names in chosen.items():
        (v,) = resolve_tasks([task], samples)
        assert isinstance(v, Variant)
        extra = [contrast] if contrast is not None and contrast not in names else []
        for name in [*names, *extra]:
            plan += [(arm_named(name), v, seed) for seed in seeds]
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--headroom", type=Path, nargs="+", required=True, help="JSON lines from benchmarks/policy_headroom.py"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--top", type=int, default=2, help="arms cloned per variant")
    parser.add_argument(
        "--arm", default=None, help="clone this one arm on every variant (the search's best fixed arm) instead"
    )
    parser.add_argument("--seeds", default="0,1,2", help="run seeds recorded per arm and variant")
    parser.add_argument("--no-contrast", action="store_true", help="do not record the heuristic beside them")
    parser.add_argument("--offline-epochs", type=int, default=40)
    parser.add_argument("--beta", type=float, default=OfflineConfig().beta)
    parser.add_argument("--epochs", type=int, default=EnvConfig().epochs)
    parser.add_argument("--budget-ratio", type=float, default=EnvConfig().param_budget_ratio)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    env = EnvConfig(epochs=args.epochs, param_budget_ratio=args.budget_ratio, split="train")
    runs = [json.loads(line) for path in args.headroom for line in path.read_text().splitlines() if line.strip()]
    tasks = sorted({r["task"] for r in runs})
    heldout = sorted(t for t, v in zip(tasks, resolve_tasks(tasks), strict=True) if v.split != "train")
    if heldout:
        raise ValueError(
            f"field 'headroom': {[str(p) for p in args.headroom]} hold held-out variants {heldout}; "
            "search on training ones"
        )
    chosen = best_arms(runs, args.top)
    if args.arm is not None:
        chosen = {task: [arm_named(args.arm).name] for task in chosen}
    seeds = [int(s) for s in args.seeds.split(",") if s]
    plan = demonstration_plan(chosen, seeds, samples=env.samples, contrast=None if args.no_contrast else "heuristic")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chosen.json").write_text(json.dumps(chosen, indent=1))
    with (args.out / "recorded_runs.jsonl").open("w") as log:
        data = record_demonstrations(plan, env, on_run=lambda r: (log.write(json.dumps(asdict(r)) + "\n"), log.flush()))
    save_transitions(data, args.out / "recorded.pt")
    recorded = time.perf_counter() - started
    network = TamiyoNetwork(NetworkConfig())
    # undiscounted: a run's return is its outcome, whether it took 10 decisions or 25 (one per slot)
    offline = replace(OfflineConfig(), epochs=args.offline_epochs, beta=args.beta, gamma=1.0, seed=args.seed)
    with (args.out / "offline.csv").open("w", newline="") as f:
        writer: csv.DictWriter | None = None

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=["epoch", *stats])
                writer.writeheader()
            writer.writerow({"epoch": epoch, **stats})
            f.flush()

        history = train_offline(network, data, offline, on_epoch=on_epoch)
    policy = GNNTamiyo(network, GNNPolicyConfig(epochs_total=env.epochs))
    path = policy.save(args.out / "policy.pt")
    print(
        json.dumps(
            {
                "job": "distill",
                "policy": str(path),
                "variants": len(chosen),
                "episodes": len(plan),
                "transitions": len(data),
                "chosen": chosen,
                "offline_first": history[0],
                "offline_last": history[-1],
                "record_seconds": round(recorded, 1),
                "seconds": round(time.perf_counter() - started, 1),
                "network_params": sum(p.numel() for p in network.parameters()),
            }
        )
    )


if __name__ == "__main__":
    main()
