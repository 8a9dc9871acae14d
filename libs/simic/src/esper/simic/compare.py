"""Comparing policies on the same runs: median final test accuracy, parameters, accuracy per parameter,
wall time, and whether each difference from the baseline holds under a bootstrap interval.

A policy is anything a job may name (:func:`esper.tamiyo.policies.make_policy`):
``heuristic``, ``none`` (the static host) or the path of a learned policy file
(``policy.pt``; ``policy.pt?sample`` draws its actions, seeded by the run's seed).
A task is a held-out variant id (``mnist1d-900000``, see :mod:`esper.simic.variants`),
``heldout:N`` for the first N held-out variants, or a Tolaria task (``mnist1d``,
``digits``, ``cifar10``, ``package.module:function``). Every policy runs every (task, seed) pair with the same settings,
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

from esper.leyline import TrainingJob, is_task_name
from esper.simic.env import EnvConfig
from esper.simic.variants import ALL_FAMILIES, Variant, load_variant, variant
from esper.tamiyo.policies import check_policy, make_policy
from esper.tamiyo.policy import Policy
from esper.tolaria.config import TrainerConfig
from esper.tolaria.runs import KASMINA
from esper.tolaria.tasks import load_task
from esper.tolaria.trainer import Trainer

#: A task to compare on: a generated variant, or a Tolaria task name.
CompareTask = Variant | str


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


def resolve_tasks(spec: Sequence[str], samples: int = 2_000) -> list[CompareTask]:
    """Tasks named by ``spec`` (``heldout:N``, variant ids, Tolaria task names); ValueError naming a bad one."""
    out: list[CompareTask] = []
    for item in spec:
        if item.startswith("heldout:"):
            count = item.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"field 'tasks': {item!r} needs a positive count, like 'heldout:3'")
            out += [variant("heldout", i, samples=samples) for i in range(int(count))]
            continue
        family, _, seed = item.rpartition("-")
        if family in ALL_FAMILIES and seed.isdigit():
            out.append(Variant(family, int(seed), samples))
        elif is_task_name(item):
            out.append(item)
        else:
            raise ValueError(
                f"field 'tasks': {item!r} is neither 'heldout:N', a variant id like 'mnist1d-900000', "
                "nor a task (mnist1d, digits, cifar10, package.module:function)"
            )
    return out


def check_policies(policies: Sequence[str]) -> None:
    """ValueError naming the field for an unknown policy or a missing policy file (before any run starts)."""
    if len(policies) < 2:
        raise ValueError(f"field 'policies': need a baseline and at least one more (value {list(policies)!r})")
    for name in policies:
        try:
            check_policy(name)
        except ValueError as exc:
            raise ValueError(str(exc).replace("field 'policy'", "field 'policies'", 1)) from None


def build_policy(name: str, epochs: int, budget: int | None, seed: int = 0) -> Policy:
    """The policy ``name`` (:func:`esper.tamiyo.policies.make_policy`: ``heuristic``, ``none``, ``PATH.pt``,
    ``PATH.pt?sample`` drawing with a generator seeded by ``seed``) for a run of ``epochs`` under ``budget``."""
    return make_policy(name, TrainingJob(epochs=epochs, param_budget=budget, seed=seed))


def task_id(task: CompareTask) -> str:
    return task.variant_id if isinstance(task, Variant) else task


def run_policy(name: str, v: CompareTask, seed: int, env: EnvConfig) -> RunResult:
    """One Tolaria run of task ``v`` with policy ``name`` and the episode settings of ``env``."""
    return run_with(lambda budget: build_policy(name, env.epochs, budget, seed), name, v, seed, env)


def run_with(
    policy_for: Callable[[int | None], Policy], name: str, v: CompareTask, seed: int, env: EnvConfig
) -> RunResult:
    """One Tolaria run of task ``v`` with the policy ``policy_for(param_budget)`` builds, reported as ``name``."""
    if isinstance(v, Variant):
        task = load_variant(v, max_train_samples=env.max_train_samples)
    else:
        task = load_task(v, max_train_samples=env.max_train_samples)
    config = TrainerConfig(
        epochs=env.epochs, batch_size=env.batch_size, lr=env.lr, lr_schedule=env.lr_schedule, seed=seed
    )
    trainer = Trainer(task, None, config, kasmina=KASMINA, run_id=f"compare-{task_id(v)}-s{seed}")
    budget = None if env.param_budget_ratio is None else int(env.param_budget_ratio * trainer.params_initial)
    trainer.param_budget = budget
    trainer.policy = policy_for(budget)
    trainer.fit()
    last = trainer.history[-1]
    return RunResult(
        policy=name,
        task=task_id(v),
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


#: The paired metrics each policy's difference from the baseline is given an interval for.
METRICS: dict[str, Callable[[RunResult], float]] = {
    "test_accuracy": lambda r: r.test_accuracy,
    "params": lambda r: float(r.params),
    "accuracy_per_kparam": lambda r: 1000 * r.test_accuracy / r.params,
    "wall_seconds": lambda r: r.wall_seconds,
}


def _difference(diffs: np.ndarray, resamples: int) -> dict[str, Any]:
    """The median of paired differences, its bootstrap 95% interval, and whether the interval excludes zero."""
    low, high = bootstrap_median(diffs, resamples)
    return {
        "median_difference": round(float(np.median(diffs)), 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "holds": bool(low > 0 or high < 0),
    }


def compare(
    policies: Sequence[str],
    tasks: Sequence[CompareTask],
    seeds: int,
    env: EnvConfig,
    *,
    resamples: int = 10_000,
    on_run: Callable[[RunResult], Any] | None = None,
) -> dict[str, Any]:
    """Run every policy on every (task, seed); the summary (see the module docstring) and every run."""
    check_policies(policies)
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
        pairs = [(r, base[(r.task, r.seed)]) for r in runs if r.policy == name]
        metrics = {
            metric: _difference(np.array([value(r) - value(b) for r, b in pairs]), resamples)
            for metric, value in METRICS.items()
        }
        # the accuracy's difference at the top level, as before; every metric's under "metrics"
        summary["differences"][name] = {"against": policies[0], **metrics["test_accuracy"], "metrics": metrics}
    summary["runs"] = [asdict(r) for r in runs]
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def table(summary: dict[str, Any]) -> str:
    """The summary as fixed-width tables: one line per policy (medians, and the accuracy difference from the
    baseline), then each other policy's difference in every metric with its interval."""
    lines = [f"{'policy':<40} {'test acc':>9} {'params':>8} {'acc/kparam':>10} {'wall s':>7}  difference (95% CI)"]
    for name, row in summary["policies"].items():
        diff = summary["differences"].get(name)
        note = "baseline" if diff is None else _interval(diff)
        lines.append(
            f"{name[-40:]:<40} {row['test_accuracy']:>9.4f} {row['params']:>8.0f} "
            f"{row['accuracy_per_kparam']:>10.4f} {row['wall_seconds']:>7.2f}  {note}"
        )
    for name, diff in summary["differences"].items():
        lines.append(f"{name[-40:]} - {diff['against']} (paired medians, bootstrap 95% CI):")
        for metric, d in diff.get("metrics", {}).items():
            lines.append(f"  {metric:<20} {_interval(d)}")
    return "\n".join(lines)


def _interval(d: dict[str, Any]) -> str:
    verdict = "holds" if d["holds"] else "not significant"
    return f"{d['median_difference']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] {verdict}"
