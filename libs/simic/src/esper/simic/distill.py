"""Search, then distill (expert iteration): clone the growth behaviour that search found best on each training
variant into the GNN policy, with the offline learner PPO fine-tunes.

1. Search (``benchmarks/policy_headroom.py``): every arm of :mod:`esper.simic.arms`
   on training variants x seeds, results as JSON lines.
2. Choose (:func:`best_arms`): per variant, the ``top`` arms by mean *validation*
   accuracy over the searched seeds (test accuracy is never looked at). With
   ``--arm`` one fixed arm is cloned on every variant instead, and ``--variants N``
   names the variants without a search file: the first N training variants, the
   ones ``policy_headroom.py --variants N`` searches.
3. Record (:func:`esper.simic.demos.record_demonstrations`): the chosen arms
   (and, with ``contrast``, the heuristic too) rerun on those variants and seeds,
   recorded as the GNN policy would have seen and decided each step; every
   episode's return (undiscounted) is its own final validation accuracy less the
   parameter rent.
4. Clone (:func:`esper.simic.offline.train_offline`): advantage-weighted,
   class-balanced behaviour cloning on a fresh :class:`TamiyoNetwork` (the same
   network ``esper simic train`` builds), so where several arms ran on a variant
   the one that paid more weighs more. The policy is ``OUT/policy.pt``;
   ``esper simic train --init OUT/policy.pt`` fine-tunes it with PPO.

    .venv/bin/esper simic distill --variants 8 --arm heuristic-per-slot --out runs/distill
    .venv/bin/esper simic distill --headroom runs/headroom.jsonl --out runs/distill
    (``python -m esper.simic.distill`` takes the same flags)

The module's top level imports no torch: ``esper`` builds its parser from
:func:`add_arguments`, and the rest of the CLI starts without Simic's dependencies.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper.tamiyo.policies import SHIPPED_POLICIES

if TYPE_CHECKING:
    from esper.simic.arms import Arm
    from esper.simic.variants import Variant

#: The shipped distilled policy, Tamiyo's policy ``learned`` (README: how it was trained and what it reached on
#: held-out variants). It ships with esper-tamiyo, where a job can name it without Simic.
DISTILLED_POLICY = SHIPPED_POLICIES["learned"]


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
        complete = {arm: statistics.fmean(s.values()) for arm, s in arms.items() if set(s) == seeds}
        chosen[task] = sorted(complete, key=lambda a: (-complete[a], a))[:top]
    return chosen


def training_variants(count: int) -> list[str]:
    """Ids of the first ``count`` training variants (those ``policy_headroom.py --variants count`` searches)."""
    from esper.simic.variants import variant

    if count < 1:
        raise ValueError(f"field 'variants': must be >= 1 (value {count!r})")
    return [variant("train", index).variant_id for index in range(count)]


def demonstration_plan(
    chosen: dict[str, list[str]], seeds: list[int], *, samples: int, contrast: str | None = "heuristic"
) -> list[tuple[Arm, Variant, int]]:
    """Every chosen arm (and the ``contrast`` arm, once) on its variant for every seed."""
    from esper.simic.arms import arm_named
    from esper.simic.compare import resolve_tasks
    from esper.simic.variants import Variant

    plan = []
    for task, names in chosen.items():
        (v,) = resolve_tasks([task], samples)
        assert isinstance(v, Variant)
        extra = [contrast] if contrast is not None and contrast not in names else []
        for name in [*names, *extra]:
            plan += [(arm_named(name), v, seed) for seed in seeds]
    return plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The distill job's flags (``esper simic distill`` and ``python -m esper.simic.distill``)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--headroom", type=Path, nargs="+", help="JSON lines from benchmarks/policy_headroom.py (variants, arms)"
    )
    where.add_argument("--variants", type=int, help="the first N training variants (policy_headroom.py's); needs --arm")
    parser.add_argument("--out", type=Path, required=True, help="job folder (recorded runs, offline.csv, policy.pt)")
    parser.add_argument("--top", type=int, default=2, help="arms cloned per variant")
    parser.add_argument(
        "--arm", default=None, help="clone this one arm on every variant (the search's best fixed arm) instead"
    )
    parser.add_argument("--seeds", default="0,1,2", help="run seeds recorded per arm and variant")
    parser.add_argument("--no-contrast", action="store_true", help="do not record the heuristic beside them")
    parser.add_argument("--offline-epochs", type=int, default=40)
    parser.add_argument("--beta", type=float, default=None, help="AWR temperature (default: OfflineConfig's, 1.0)")
    parser.add_argument("--epochs", type=int, default=None, help="Tolaria epochs per run (default: EnvConfig's, 10)")
    parser.add_argument(
        "--budget-ratio", type=float, default=None, help="parameter budget / host (default: EnvConfig's, 4.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="network initialization and minibatch order")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"field 'seeds': must be integers separated by commas (value {text!r})") from None
    if not seeds:
        raise ValueError(f"field 'seeds': at least one run seed (value {text!r})")
    return seeds


def _chosen(args: argparse.Namespace) -> dict[str, list[str]]:
    """The arms to record per variant: from the search file, or ``--arm`` on the first ``--variants``."""
    from esper.simic.arms import arm_named
    from esper.simic.compare import resolve_tasks

    arm = None if args.arm is None else arm_named(args.arm).name
    if args.headroom is None:
        if arm is None:
            raise ValueError(
                f"field 'arm': --variants {args.variants} needs --arm (choosing arms per variant reads --headroom)"
            )
        # sorted by id, as best_arms orders a search's variants: the same plan, episode for episode
        return {task: [arm] for task in sorted(training_variants(args.variants))}
    missing = [str(p) for p in args.headroom if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"field 'headroom': {missing} do not exist")
    runs = [json.loads(line) for path in args.headroom for line in path.read_text().splitlines() if line.strip()]
    tasks = sorted({r["task"] for r in runs})
    heldout = sorted(t for t, v in zip(tasks, resolve_tasks(tasks), strict=True) if v.split != "train")
    if heldout:
        raise ValueError(
            f"field 'headroom': {[str(p) for p in args.headroom]} hold held-out variants {heldout}; "
            "search on training ones"
        )
    chosen = best_arms(runs, args.top)
    return chosen if arm is None else {task: [arm] for task in chosen}


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def distill(args: argparse.Namespace) -> dict[str, Any]:
    """The job the flags of :func:`add_arguments` describe (module docstring); returns its summary."""
    import torch

    from esper.simic.demos import record_demonstrations
    from esper.simic.env import EnvConfig
    from esper.simic.offline import OfflineConfig, save_transitions, train_offline
    from esper.tamiyo.gnn.network import NetworkConfig, TamiyoNetwork
    from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

    if args.offline_epochs < 1:
        raise ValueError(f"field 'offline_epochs': must be >= 1 (value {args.offline_epochs!r})")
    progress = not args.no_progress
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    defaults = EnvConfig()
    env = EnvConfig(
        epochs=defaults.epochs if args.epochs is None else args.epochs,
        param_budget_ratio=defaults.param_budget_ratio if args.budget_ratio is None else args.budget_ratio,
        split="train",
    )
    seeds = _seeds(args.seeds)
    chosen = _chosen(args)
    plan = demonstration_plan(chosen, seeds, samples=env.samples, contrast=None if args.no_contrast else "heuristic")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chosen.json").write_text(json.dumps(chosen, indent=1))
    bar = _bar(progress, len(plan), "record")

    def on_run(result: Any) -> None:
        log.write(json.dumps(asdict(result)) + "\n")
        log.flush()
        if bar is not None:
            bar.set_postfix_str(f"{result.policy} {result.task} val {result.val_accuracy:.3f}", refresh=False)
            bar.update(1)

    with (args.out / "recorded_runs.jsonl").open("w") as log:
        try:
            data = record_demonstrations(plan, env, on_run=on_run)
        finally:
            if bar is not None:
                bar.close()
    save_transitions(data, args.out / "recorded.pt")
    recorded = time.perf_counter() - started
    network = TamiyoNetwork(NetworkConfig())
    # undiscounted: a run's return is its outcome, whether it took 10 decisions or 25 (one per slot)
    offline = replace(OfflineConfig(), epochs=args.offline_epochs, gamma=1.0, seed=args.seed)
    if args.beta is not None:
        offline = replace(offline, beta=args.beta)
    bar = _bar(progress, offline.epochs, "offline")
    with (args.out / "offline.csv").open("w", newline="") as f:
        writer: csv.DictWriter[str] | None = None

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=["epoch", *stats])
                writer.writeheader()
            writer.writerow({"epoch": epoch, **stats})
            f.flush()
            if bar is not None:
                bar.set_postfix_str(
                    f"imit {stats['imitation']:.2f} ev {stats['explained_variance']:.2f}", refresh=False
                )
                bar.update(1)

        try:
            history = train_offline(network, data, offline, on_epoch=on_epoch)
        finally:
            if bar is not None:
                bar.close()
    policy = GNNTamiyo(network, GNNPolicyConfig(epochs_total=env.epochs))
    path = policy.save(args.out / "policy.pt")
    return {
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        summary = distill(args)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
