"""``esper simic train`` (record heuristic runs, offline AWR, PPO) and ``esper simic compare`` (= ``esper compare``).

Simic, torch_geometric and gymnasium load only when the subcommand runs, so
the rest of the CLI works without them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from esper.cli import compare as compare_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``esper simic train`` and its flags."""
    simic = sub.add_parser("simic", help="train Tamiyo's learned policy (Simic)")
    jobs = simic.add_subparsers(dest="simic_command", required=True)
    train = jobs.add_parser("train", help="record heuristic runs, learn offline, fine-tune with PPO")
    train.add_argument("--out", type=Path, default=Path("runs/simic"), help="job folder (checkpoint, logs, policy)")
    train.add_argument("--resume", action="store_true", help="continue the job in --out")
    train.add_argument("--episodes", type=int, default=40, help="recorded heuristic episodes")
    train.add_argument("--offline-epochs", type=int, default=30)
    train.add_argument(
        "--no-balance", action="store_true", help="offline: plain AWR (no per-operation weights against WAIT's share)"
    )
    train.add_argument("--timesteps", type=int, default=None, help="PPO decisions in all (default 2880)")
    train.add_argument("--envs", type=int, default=2, help="environments in subprocesses")
    train.add_argument("--epochs", type=int, default=10, help="Tolaria epochs per episode")
    train.add_argument("--hidden", type=int, default=64, help="GNN width")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare_command.add_arguments(jobs.add_parser("compare", help="the same as 'esper compare'"))


def _exit_on_sigterm() -> None:
    # SIGTERM's default kills without unwinding, leaving the vector env's worker processes behind;
    # as SystemExit it runs the job's cleanup (envs closed, the last checkpoint kept)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def simic(args: argparse.Namespace) -> int:
    import torch

    _exit_on_sigterm()

    if args.simic_command == "compare":
        return compare_command.compare(args)

    from esper.simic.env import EnvConfig
    from esper.simic.offline import OfflineConfig
    from esper.simic.train import TrainConfig, TrainingJob, _ppo_defaults, train

    torch.set_num_threads(1)
    progress = not args.no_progress
    if args.resume:
        summary = TrainingJob.resume(args.out, total_timesteps=args.timesteps, progress=progress).run()
    else:
        from dataclasses import replace

        from esper.tamiyo.gnn.network import NetworkConfig

        ppo = _ppo_defaults()
        config = TrainConfig(
            env=EnvConfig(epochs=args.epochs),
            network=NetworkConfig(hidden=args.hidden),
            record_episodes=args.episodes,
            offline=OfflineConfig(epochs=args.offline_epochs, balance=not args.no_balance, seed=args.seed),
            ppo=replace(ppo, total_timesteps=args.timesteps or 2880),
            num_envs=args.envs,
            seed=args.seed,
        )
        summary = train(config, args.out, progress=progress)
    print(json.dumps(summary, default=str))
    return 0
