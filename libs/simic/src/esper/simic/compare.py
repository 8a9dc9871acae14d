"""Comparing policies on the same runs: median final test accuracy, parameters, accuracy per parameter,
wall time, and whether each difference from the baseline holds under a bootstrap interval.

A policy is ``heuristic``, ``none`` (the static host) or the path of a learned
policy file (``policy.pt``; ``policy.pt?sample`` draws its actions, seeded).
A task is a held-out variant id (``mnist1d-900000``, see :mod:`esper.simic.variants`)
or ``heldout:N`` for the first N held-out variants. Every policy runs every (task, seed) pair with the same settings,
through Tolaria's trainer and its decide step (policy -> safety monitor ->
command); the pairs are interleaved so machine noise hits every policy alike.
The first policy is the baseline: for each other policy, the paired
differences of final test accuracy get a bootstrap 95% interval of their median.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from esper.leyline import TrainingJob
from esper.simic.env import EnvConfig
from esper.simic.variants import FAMILIES, Variant, load_variant, variant
from esper.tamiyo.policies import make_policy
from esper.tamiyo.policy import Policy
from esper.tolaria.config import TrainerConfig
from esper.tolaria.runs import KASMINA
from esper.tolaria.trainer import Trainer


@dataclass(frozen=True, slots=True)
class RunResult:
    policy: str
    task: str
    seed: int
    test_accuracy: float
    val_accuracy: float
    params: int
    params_initial: int
    wall_seconds: float
    actions: int
    rejected: int


def resolve_tasks(spec: Sequence[str], samples: int = 2_000) -> list[Variant]:
    """Variants named by ``spec`` (``heldout:N`` or variant ids); ValueError naming a bad one."""
    out: list[Variant] = []
    for item in spec:
        if item.startswith("heldout:"):
            count = int(item.split(":", 1)[1])
            out += [variant("heldout", i, samples=samples) for i in range(count)]
            continue
        family, _, seed = item.rpartition("-")
        if family not in FAMILIES or not seed.isdigit():
            raise ValueError(f"field 'tasks': {item!r} is neither 'heldout:N' nor a variant id like 'mnist1d-900000'")
        out.append(Variant(family, int(seed), samples))
    return out


def build_policy(name: str, epochs: int, budget: int | None, seed: int = 0) -> Policy:
    """``heuristic``, ``none`` or a learned policy file (``PATH.pt``, or ``PATH.pt?sample`` to draw actions
    with a generator seeded by the run's ``seed``), for a run of ``epochs`` under ``budget``."""
    path, _, mode = name.partition("?")
    if path.endswith(".pt"):
        from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo

        if mode not in ("", "sample"):
            raise ValueError(f"field 'policies': unknown mode {mode!r} in {name!r} (known: sample)")
        config = GNNPolicyConfig(epochs_total=epochs, param_budget=budget, sample=mode == "sample", sample_seed=seed)
        return GNNTamiyo.load(path, config)
    return make_policy(name, TrainingJob(epochs=epochs, param_budget=budget))


def run_policy(name: str, v: Variant, seed: int, env: EnvConfig) -> RunResult:
    """One Tolaria run of variant ``v`` with policy ``name`` and the episode settings of ``env``."""
    task = load_variant(v, max_train_samples=env.max_train_samples)
    config = TrainerConfig(
        epochs=env.epochs, batch_size=env.batch_size, lr=env.lr, lr_schedule=env.lr_schedule, seed=seed
    )
    trainer = Trainer(task, None, config, kasmina=KASMINA, run_id=f"compare-{v.variant_id}-s{seed}")
    budget = None if env.param_budget_ratio is None else int(env.param_budget_ratio * trainer.params_initial)
    trainer.param_budget = budget
    trainer.policy = build_policy(name, env.epochs, budget, seed)
    trainer.fit()
    last = trainer.history[-1]
    return RunResult(
        policy=name,
        task=v.variant_id,
        seed=seed,
        test_accuracy=last.test_accuracy,
        val_accuracy=last.val_accuracy,
        params=last.params,
        params_initial=trainer.params_initial,
        wall_seconds=round(trainer.wall_seconds, 3),
        actions=sum(1 for d in trainer.decisions if d.action.value != "wait" and d.accepted),
        rejected=sum(1 for d in trainer.decisions if not d.accepted),
    )


def bootstrap_median(diffs: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the median of ``diffs``."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(diffs, size=(resamples, len(diffs)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def compare(
    policies: Sequence[str],
    tasks: Sequence[Variant],
    seeds: int,
    env: EnvConfig,
    *,
    resamples: int = 10_000,
    on_run: Callable[[RunResult], Any] | None = None,
) -> dict[str, Any]:
    """Run every policy on every (task, seed); the summary (see the module docstring) and every run."""
    if len(policies) < 2:
        raise ValueError(f"field 'policies': need a baseline and at least one more (value {list(policies)!r})")
    runs: list[RunResult] = []
    started = time.perf_counter()
    for t, v in enumerate(tasks):
        for seed in range(seeds):
            shift = (t + seed) % len(policies)
            for name in [*policies[shift:], *policies[:shift]]:
                result = run_policy(name, v, seed, env)
                runs.append(result)
                if on_run is not None:
                    on_run(result)
    summary: dict[str, Any] = {"policies": {}, "differences": {}}
    for name in policies:
        mine = [r for r in runs if r.policy == name]
        accuracy = float(np.median([r.test_accuracy for r in mine]))
        params = float(np.median([r.params for r in mine]))
        summary["policies"][name] = {
            "test_accuracy": round(accuracy, 4),
            "params": params,
            "accuracy_per_kparam": round(float(np.median([1000 * r.test_accuracy / r.params for r in mine])), 4),
            "wall_seconds": round(float(np.median([r.wall_seconds for r in mine])), 2),
            "actions_per_run": round(float(np.mean([r.actions for r in mine])), 2),
        }
    base = {(r.task, r.seed): r for r in runs if r.policy == policies[0]}
    for name in policies[1:]:
        diffs = np.array([r.test_accuracy - base[(r.task, r.seed)].test_accuracy for r in runs if r.policy == name])
        low, high = bootstrap_median(diffs, resamples)
        summary["differences"][name] = {
            "against": policies[0],
            "median_difference": round(float(np.median(diffs)), 4),
            "ci_low": round(low, 4),
            "ci_high": round(high, 4),
            "holds": bool(low > 0 or high < 0),
        }
    summary["runs"] = [asdict(r) for r in runs]
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width table (one line per policy)."""
    lines = [f"{'policy':<40} {'test acc':>9} {'params':>8} {'acc/kparam':>10} {'wall s':>7}  difference (95% CI)"]
    for name, row in summary["policies"].items():
        diff = summary["differences"].get(name)
        note = "baseline"
        if diff is not None:
            verdict = "holds" if diff["holds"] else "not significant"
            note = f"{diff['median_difference']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] {verdict}"
        lines.append(
            f"{name[-40:]:<40} {row['test_accuracy']:>9.4f} {row['params']:>8.0f} "
            f"{row['accuracy_per_kparam']:>10.4f} {row['wall_seconds']:>7.2f}  {note}"
        )
    return "\n".join(lines)
