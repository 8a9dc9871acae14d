"""The learned Tamiyo against the heuristic on held-out task variants it never trained on.

For each of ``--variants`` held-out variants (:func:`esper.simic.variants.variant`,
seeds disjoint from every training variant) and each of ``--seeds`` run seeds,
one Tolaria run with the learned policy and one with Tamiyo's heuristic, the
same run settings as Simic's episodes (``--epochs`` epochs, parameter budget
``--budget-ratio`` x the host's size), both through the trainer's decide step
(policy -> safety monitor -> command). Runs alternate between the policies so
machine noise hits both alike.

Reported per policy: median final test accuracy and median final parameters;
the paired differences (learned - heuristic, same variant and seed) with a
bootstrap 95% interval of their median (10,000 resamples).

    .venv/bin/python benchmarks/policy_vs_heuristic.py --policy runs/simic-default/policy.pt

Last line: JSON with ``learned``, ``heuristic`` (``test_accuracy``, ``params``),
``ci_low``, ``ci_high``, ``median_difference``, ``runs`` and ``beats`` (interval
above zero at no more parameters).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from esper.leyline import TrainingJob
from esper.simic.env import EnvConfig
from esper.simic.variants import load_variant, variant
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo
from esper.tamiyo.policies import make_policy
from esper.tolaria.config import TrainerConfig
from esper.tolaria.runs import KASMINA
from esper.tolaria.trainer import Trainer


def one_run(name: str, policy_path: str, v, seed: int, env: EnvConfig) -> dict:
    task = load_variant(v, max_train_samples=env.max_train_samples)
    config = TrainerConfig(
        epochs=env.epochs,
        batch_size=env.batch_size,
        lr=env.lr,
        lr_schedule=env.lr_schedule,
        seed=seed,
        checkpoint_every=10**6,
    )
    trainer = Trainer(task, None, config, kasmina=KASMINA, run_id=f"bench-{name}-{v.variant_id}-s{seed}")
    budget = None if env.param_budget_ratio is None else int(env.param_budget_ratio * trainer.params_initial)
    trainer.param_budget = budget
    if name == "learned":
        trainer.policy = GNNTamiyo.load(policy_path, GNNPolicyConfig(epochs_total=env.epochs, param_budget=budget))
    else:
        trainer.policy = make_policy("heuristic", TrainingJob(epochs=env.epochs, param_budget=budget))
    trainer.fit()
    last = trainer.history[-1]
    decisions = trainer.decisions
    return {
        "policy": name,
        "variant": v.variant_id,
        "seed": seed,
        "test_accuracy": last.test_accuracy,
        "val_accuracy": last.val_accuracy,
        "params": last.params,
        "params_initial": trainer.params_initial,
        "wall_seconds": round(trainer.wall_seconds, 2),
        "actions": sum(1 for d in decisions if d.action.value != "wait" and d.accepted),
        "rejected": sum(1 for d in decisions if not d.accepted),
    }


def bootstrap_median(diffs: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    samples = rng.choice(diffs, size=(resamples, len(diffs)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", required=True, help="a policy file from 'esper simic train' (policy.pt)")
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=EnvConfig().epochs)
    parser.add_argument("--budget-ratio", type=float, default=EnvConfig().param_budget_ratio)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = EnvConfig(epochs=args.epochs, param_budget_ratio=args.budget_ratio, split="heldout")
    runs = []
    started = time.perf_counter()
    for i in range(args.variants):
        v = variant("heldout", i, samples=env.samples)
        for seed in range(args.seeds):
            order = ("learned", "heuristic") if (i + seed) % 2 == 0 else ("heuristic", "learned")
            for name in order:
                result = one_run(name, args.policy, v, seed, env)
                runs.append(result)
                print(json.dumps(result), flush=True)
    by = {name: [r for r in runs if r["policy"] == name] for name in ("learned", "heuristic")}
    key = {(r["variant"], r["seed"]): r for r in by["heuristic"]}
    diffs = np.array([r["test_accuracy"] - key[(r["variant"], r["seed"])]["test_accuracy"] for r in by["learned"]])
    ci_low, ci_high = bootstrap_median(diffs, args.resamples, np.random.default_rng(0))
    summary = {
        name: {
            "test_accuracy": round(float(np.median([r["test_accuracy"] for r in rs])), 4),
            "params": float(np.median([r["params"] for r in rs])),
            "actions_per_run": round(float(np.mean([r["actions"] for r in rs])), 2),
        }
        for name, rs in by.items()
    }
    per_variant = {
        r["variant"]: {
            name: round(float(np.median([x["test_accuracy"] for x in by[name] if x["variant"] == r["variant"]])), 4)
            for name in by
        }
        for r in runs
    }
    beats = ci_low > 0 and summary["learned"]["params"] <= summary["heuristic"]["params"]
    result = {
        "benchmark": "policy_vs_heuristic",
        "policy": args.policy,
        "variants": args.variants,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "runs": len(runs),
        "learned": summary["learned"],
        "heuristic": summary["heuristic"],
        "median_difference": round(float(np.median(diffs)), 4),
        "ci_low": round(ci_low, 4),
        "ci_high": round(ci_high, 4),
        "per_variant": per_variant,
        "seconds": round(time.perf_counter() - started, 1),
        "beats": bool(beats),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
