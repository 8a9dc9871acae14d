"""``esper compare``: policies side by side on the same runs (``esper simic compare`` is the same command).

Every policy (``heuristic``, ``none``, or a learned policy file ``PATH.pt``)
trains every task for every seed with the same settings; printed are a table
of each policy's median final test accuracy, final parameters, accuracy per
thousand parameters and training wall time, then each policy's paired
differences from the first (the baseline) with a bootstrap 95% interval and
whether it holds (the interval excludes zero). The last line is the summary as
JSON; ``--json`` also writes it, with every run, to a file. The machinery is
:func:`esper.simic.compare.compare`, loaded only when the command runs (it
needs ``esper-simic``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The comparison's flags (shared by ``esper compare`` and ``esper simic compare``)."""
    parser.add_argument(
        "--policies",
        default="heuristic,none",
        help="comma-separated, the first is the baseline: heuristic, none, or policy files PATH.pt (PATH.pt?sample)",
    )
    parser.add_argument(
        "--tasks",
        default="heldout:3",
        help="comma-separated: heldout:N (Simic's held-out variants), variant ids (digits-900001), "
        "or tasks (mnist1d, digits, package.module:function)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 for every task")
    parser.add_argument("--epochs", type=int, default=10, help="Tolaria epochs per run (>= 2)")
    parser.add_argument(
        "--budget-ratio", type=float, default=4.0, help="parameter budget as a multiple of the host's size"
    )
    parser.add_argument("--max-train-samples", type=int, default=None, help="train on the first N rows only")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary (and every run) here")
    parser.add_argument("--quiet", action="store_true", help="no line per finished run on stderr")


def add_parser(sub: Any) -> None:
    """Register ``esper compare`` on the top-level subparsers ``sub``."""
    add_arguments(sub.add_parser("compare", help="compare policies on the same tasks and seeds (bootstrap CIs)"))


def compare(args: argparse.Namespace) -> int:
    """Run the comparison ``args`` describes; prints the table and the JSON summary."""
    if args.seeds < 1:
        raise ValueError(f"field 'seeds': must be >= 1 (value {args.seeds!r})")
    if args.budget_ratio is not None and args.budget_ratio <= 0:
        raise ValueError(f"field 'budget_ratio': must be > 0 (value {args.budget_ratio!r})")
    try:
        import torch

        from esper.simic.compare import check_policies, compare, resolve_tasks, table
        from esper.simic.env import EnvConfig
    except ImportError as exc:
        raise ValueError(f"esper compare needs esper-simic (pip install libs/simic): {exc}") from None

    torch.set_num_threads(1)
    env = EnvConfig(
        epochs=args.epochs,
        split="heldout",
        param_budget_ratio=args.budget_ratio,
        max_train_samples=args.max_train_samples,
    )
    policies = _split(args.policies)
    check_policies(policies)  # a mistyped path fails now, not after the first policy's runs
    tasks = resolve_tasks(_split(args.tasks), env.samples)

    def progress(run: Any) -> None:
        if not args.quiet:
            print(
                f"{run.policy} on {run.task} seed {run.seed}: test {100 * run.test_accuracy:.2f}% "
                f"params {run.params} ({run.wall_seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    summary = compare(policies, tasks, args.seeds, env, resamples=args.resamples, on_run=progress)
    print(table(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    return 0
