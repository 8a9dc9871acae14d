"""The ``esper`` command line: ``esper train``, ``esper report``, ``esper compare``, and the
subcommands of their own modules (up, runs, simic, slots).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.cli import compare as compare_command
from esper.cli import runs as runs_command
from esper.cli import simic as simic_command
from esper.cli import slots as slots_command
from esper.cli import up as up_command
from esper.leyline import BUILTIN_TASKS, LR_SCHEDULES, PRECISIONS, TrainingJob, is_task_name, validate
from esper.tamiyo.policies import POLICIES, SHIPPED_POLICIES, check_policy, is_known_policy, is_policy_file

_JOB = TrainingJob()


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (value {value!r})")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (value {value!r})")
    return number


def _task(value: str) -> str:
    if not is_task_name(value):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(BUILTIN_TASKS)} or package.module:function")
    return value


def _policy(value: str) -> str:
    if not is_known_policy(value):
        known = ", ".join((*POLICIES, *SHIPPED_POLICIES))
        raise argparse.ArgumentTypeError(f"must be one of {known} or a policy file PATH.pt (value {value!r})")
    return value


def _run_name(job: TrainingJob) -> str:
    """``TASK-POLICY-sSEED``; a policy file is named by its file name without ``.pt``."""
    base = job.policy.partition("?")[0]
    policy = Path(base).stem if is_policy_file(job.policy) else base
    return f"{job.task.replace(':', '.')}-{policy}-s{job.seed}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="esper", description="Esper: neural networks that grow while they train.")
    sub = top.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a task in one process, Tamiyo deciding each epoch")
    train.add_argument(
        "--task", type=_task, default=_JOB.task, help=f"{', '.join(BUILTIN_TASKS)} or package.module:function"
    )
    train.add_argument(
        "--policy",
        type=_policy,
        default=_JOB.policy,
        help="heuristic-per-slot (default: the heuristic, asked once per slot at each boundary), heuristic (once "
        "per boundary), none (the static host), learned (the learned policy shipped with "
        "Esper), or a learned policy file PATH.pt from 'esper simic train' (NAME?sample draws its actions, seeded)",
    )
    train.add_argument(
        "--epochs", type=_positive, default=None, help="planned epochs (default 40; with --resume: keep)"
    )
    train.add_argument(
        "--steps-per-epoch",
        type=_positive,
        default=None,
        help="training steps per epoch, one round of decisions (default: one pass over the training split)",
    )
    train.add_argument(
        "--lengthen-settled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --steps-per-epoch: while no seed is in flight and the policy waited, decide once per pass "
        "instead of every epoch (default: on)",
    )
    train.add_argument(
        "--host-wait-steps",
        type=_non_negative,
        default=_JOB.host_wait_steps,
        help="for up to this many steps from the start the host does not learn until every slot holds a seed in "
        "the forward: it waits for its seeds instead of learning ahead of them (default: 0, never)",
    )
    train.add_argument(
        "--isolate-seeds",
        action=argparse.BooleanOptionalAction,
        default=_JOB.isolate_seeds,
        help="a new seed trains isolated on detached host features before it blends in (default: off: it "
        "learns jointly with the host from the start of TRAINING, in the forward at full weight)",
    )
    train.add_argument("--seed", type=int, default=_JOB.seed, help="global seed: the same seed reproduces the run")
    train.add_argument("--out", type=Path, default=None, help="run folder (default runs/TASK-POLICY-sSEED)")
    train.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue the run in DIR")
    train.add_argument("--data-dir", default=None, help="local data folder (cifar10: the python batches)")
    train.add_argument("--max-train-samples", type=_positive, default=None, help="train on the first N rows only")
    train.add_argument("--lr", type=float, default=_JOB.lr)
    train.add_argument("--batch-size", type=_positive, default=_JOB.batch_size)
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_JOB.lr_schedule)
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=_JOB.precision,
        help="fp32 (default), or bf16: forward passes under bfloat16 autocast, weights and optimizer state in "
        "float32 (for GPUs with bfloat16: Ampere or newer)",
    )
    train.add_argument("--param-budget", type=_positive, default=None, help="largest parameter count seeds may grow to")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--checkpoint-every",
        type=_positive,
        default=None,
        metavar="N",
        help="rewrite the checkpoint every N epochs and after the last (default: about once per pass over the "
        "data, every epoch of the default length; a crash loses at most N-1 epochs)",
    )
    train.add_argument(
        "--device",
        default=None,
        help="where the run trains: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N "
        "(default: the ESPER_DEVICE environment variable, else auto; not stored in the run, so --resume may move it)",
    )
    train.add_argument(
        "--nproc",
        type=_positive,
        default=None,
        help="processes training the run together (torch.distributed, data parallel; default 1, with --resume: keep)",
    )

    report = sub.add_parser("report", help="print a run's summary")
    report.add_argument("dir", type=Path, help="run folder holding report.json")

    up_command.add_parser(sub)
    compare_command.add_parser(sub)
    runs_command.add_parser(sub)
    simic_command.add_parser(sub)
    slots_command.add_parser(sub)
    return top


def train(args: argparse.Namespace) -> int:
    # Tolaria (torch) is imported by the commands that train, so `esper runs ...` and the rest start fast
    from esper.tolaria.checkpoint import read_checkpoint
    from esper.tolaria.device import DEVICE_ENV, resolve_device
    from esper.tolaria.report import format_summary
    from esper.tolaria.runs import job_from_dict, run

    if args.device is not None:  # the process's device (its ranks, --nproc, inherit it), refused before any folder
        resolve_device(args.device)
        os.environ[DEVICE_ENV] = args.device
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ValueError(
                f"field 'out': --resume continues in its own folder {str(args.resume)!r} (value {str(args.out)!r})"
            )
        out = args.resume
        stored = read_checkpoint(out)["meta"]
        job = job_from_dict(
            {
                **stored,
                "epochs": args.epochs or stored["epochs"],
                "world_size": args.nproc or stored.get("world_size", 1),
            }
        )
    else:
        job = validate(
            TrainingJob(
                task=args.task,
                policy=args.policy,
                epochs=args.epochs or _JOB.epochs,
                steps_per_epoch=args.steps_per_epoch,
                lengthen_settled=args.lengthen_settled,
                host_wait_steps=args.host_wait_steps,
                isolate_seeds=args.isolate_seeds,
                seed=args.seed,
                data_dir=args.data_dir,
                max_train_samples=args.max_train_samples,
                batch_size=args.batch_size,
                lr=args.lr,
                lr_schedule=args.lr_schedule,
                precision=args.precision,
                param_budget=args.param_budget,
                world_size=args.nproc or 1,
            )
        )
        check_policy(job.policy)  # a missing policy file fails before the run's folder is made
        out = args.out or Path("runs") / _run_name(job)
    slots_command.importable_cwd()
    report = run(
        job, out, resume=args.resume is not None, progress=not args.no_progress, checkpoint_every=args.checkpoint_every
    )
    print(format_summary(report))
    print(f"report: {out / 'report.json'}  curves: {out / 'curves.png'}  events: {out / 'events.jsonl'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "up":
            return up_command.up(args)
        if args.command == "runs":
            return runs_command.runs(args)
        if args.command == "compare":
            return compare_command.compare(args)
        if args.command == "simic":
            return simic_command.simic(args)
        if args.command == "slots":
            return slots_command.slots(args)
        from esper.tolaria.report import format_summary, load_report

        print(format_summary(load_report(args.dir)))
        return 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"esper {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
