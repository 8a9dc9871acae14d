"""``esper simic train`` (record heuristic runs, offline AWR, PPO; or PPO from a policy file, ``--init``),
``esper simic distill`` (search-then-distill, :mod:`esper.simic.distill`) and ``esper simic compare``
(= ``esper compare``).

Simic, torch_geometric and gymnasium load only when the subcommand runs, so
the rest of the CLI works without them (:mod:`esper.simic.distill` imports them only when its job runs).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from esper.cli import compare as compare_command

try:  # torch-free at import (its job imports Simic's dependencies); esper-simic is not a CLI dependency
    from esper.simic import distill as distill_job
except ImportError:
    distill_job = None  # type: ignore[assignment]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``esper simic train``, ``distill`` and ``compare`` and their flags."""
    simic = sub.add_parser("simic", help="train Tamiyo's learned policy (Simic)")
    jobs = simic.add_subparsers(dest="simic_command", required=True)
    train = jobs.add_parser("train", help="record heuristic runs, learn offline, fine-tune with PPO")
    train.add_argument("--out", type=Path, default=Path("runs/simic"), help="job folder (checkpoint, logs, policy)")
    train.add_argument("--resume", action="store_true", help="continue the job in --out")
    train.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="POLICY.pt",
        help="a fresh job that fine-tunes this policy file with PPO (its network and running statistics; "
        "no recording, no offline phase); its network sizes must be the job's",
    )
    train.add_argument("--episodes", type=int, default=40, help="recorded heuristic episodes")
    train.add_argument("--offline-epochs", type=int, default=30)
    train.add_argument(
        "--no-balance", action="store_true", help="offline: plain AWR (no per-operation weights against WAIT's share)"
    )
    train.add_argument("--timesteps", type=int, default=None, help="PPO decisions in all (default 2880)")
    train.add_argument("--envs", type=int, default=2, help="environments in subprocesses")
    train.add_argument(
        "--rollout-steps",
        type=int,
        default=None,
        metavar="N",
        help="PPO: decisions per environment between updates (default 18: two 10-epoch episodes once per epoch)",
    )
    train.add_argument("--lr", type=float, default=None, help="PPO: Adam's learning rate, annealed (default 3e-4)")
    train.add_argument(
        "--per-slot",
        action="store_true",
        help="PPO asks again at a boundary about the slots not acted on yet, as the deployed GNN policy is asked "
        "(stored in the job: --resume keeps it)",
    )
    train.add_argument(
        "--value-warmup",
        type=int,
        default=0,
        metavar="N",
        help="PPO: the first N updates fit only the value head to the returns (the policy does not move)",
    )
    train.add_argument("--epochs", type=int, default=10, help="Tolaria epochs per episode")
    train.add_argument("--hidden", type=int, default=64, help="GNN width")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    distill = jobs.add_parser(
        "distill", help="record the best growth behaviour found by search, clone it offline (AWR)"
    )
    if distill_job is not None:
        distill_job.add_arguments(distill)
    compare_command.add_arguments(jobs.add_parser("compare", help="the same as 'esper compare'"))


def _exit_on_sigterm() -> None:
    # SIGTERM's default kills without unwinding, leaving the vector env's worker processes behind;
    # as SystemExit it runs the job's cleanup (envs closed, the last checkpoint kept)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def train_config(args: argparse.Namespace) -> Any:
    """The :class:`esper.simic.train.TrainConfig` a fresh ``esper simic train`` job runs with."""
    from dataclasses import replace

    from esper.simic.env import EnvConfig
    from esper.simic.offline import OfflineConfig
    from esper.simic.train import TrainConfig, _ppo_defaults
    from esper.tamiyo.gnn.network import NetworkConfig

    ppo = _ppo_defaults()
    return TrainConfig(
        env=EnvConfig(epochs=args.epochs, per_slot=args.per_slot),
        network=NetworkConfig(hidden=args.hidden),
        record_episodes=args.episodes,
        offline=OfflineConfig(epochs=args.offline_epochs, balance=not args.no_balance, seed=args.seed),
        ppo=replace(
            ppo,
            total_timesteps=ppo.total_timesteps if args.timesteps is None else args.timesteps,
            num_steps=ppo.num_steps if args.rollout_steps is None else args.rollout_steps,
            learning_rate=ppo.learning_rate if args.lr is None else args.lr,
            value_warmup_updates=args.value_warmup,
        ),
        num_envs=args.envs,
        seed=args.seed,
        init=None if args.init is None else str(args.init),
    )


def simic(args: argparse.Namespace) -> int:
    import torch

    _exit_on_sigterm()

    if args.simic_command == "compare":
        return compare_command.compare(args)
    if args.simic_command == "distill":
        if distill_job is None:
            raise ValueError("field 'command': 'esper simic distill' needs the esper-simic package (not installed)")
        print(json.dumps(distill_job.distill(args)))
        return 0

    from esper.simic.train import TrainingJob, train

    torch.set_num_threads(1)
    progress = not args.no_progress
    if args.resume and args.init is not None:
        raise ValueError(f"field 'init': --resume continues the job in --out; --init {str(args.init)!r} starts one")
    if args.resume:
        summary = TrainingJob.resume(args.out, total_timesteps=args.timesteps, progress=progress).run()
    else:
        summary = train(train_config(args), args.out, progress=progress)
    print(json.dumps(summary, default=str))
    return 0
