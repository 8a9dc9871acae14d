"""Tolaria's static run vs a bare PyTorch loop on MNIST-1D, and where the difference goes.

Both train the 5,210-parameter host (``host_channels=25``) with the same seed,
data order, Adam, clipping, ``anneal`` schedule and per-epoch evaluation of
the validation and test splits (the bare loop is ``growth_arms.bare_run``; the
two give the same accuracies). Runs alternate (bare, Tolaria with a checkpoint
every epoch, Tolaria with a checkpoint every ``--checkpoint-every`` epochs and layer health every
``--health-every``) for
``--repeats`` rounds; the ratios are medians of the per-round ratios.

A separate instrumented Tolaria run times each per-epoch part (training steps,
evaluations, seed measurement, layer health, publishing, governor snapshot,
checkpoint) in CPU milliseconds against the bare loop's epoch. Both wall and
CPU-time ratios are reported: on shared cores the CPU time of each run's own
process is the steadier of the two. The last stdout line is JSON.

    .venv/bin/python benchmarks/tolaria_overhead.py [--epochs 40] [--repeats 5] [--checkpoint-every 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from growth_arms import bare_run, tolaria_run

import esper.tolaria.trainer as trainer_module
from esper.tamiyo.policy import StaticPolicy
from esper.tolaria import steps as steps_module
from esper.tolaria.config import TrainerConfig
from esper.tolaria.runs import KASMINA
from esper.tolaria.tasks import load_task


def _tolaria(task: Any, config: TrainerConfig) -> Any:
    with tempfile.TemporaryDirectory() as out:
        _, run = tolaria_run(task, config, Path(out), kasmina=KASMINA, policy=lambda _m: StaticPolicy())
    return run


def _timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    # CPU time of this process: on shared cores, wall time mostly measures the neighbours
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.process_time() - t0

    return wrapper


def breakdown(task: Any, config: TrainerConfig) -> dict[str, float]:
    """CPU milliseconds per epoch in each part of a Tolaria static epoch (one instrumented run)."""
    totals: dict[str, float] = defaultdict(float)
    patches = [
        (trainer_module, "train_epoch", "train_steps"),
        (trainer_module, "evaluate", "evaluate_val_and_test"),
        (trainer_module, "measure_seed", "seed_measurement"),
        (trainer_module, "layer_health", "layer_health"),  # a forward of its own (small eval batches)
        (trainer_module.LayerCapture, "reports", "layer_health"),  # read off the validation pass (the default)
        (trainer_module, "save_checkpoint", "checkpoint"),
    ]
    import growth_arms

    patches.append((growth_arms, "save_checkpoint", "checkpoint"))
    originals = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches if hasattr(mod, attr)]
    for mod, attr, name in patches:
        if hasattr(mod, attr):
            setattr(mod, attr, _timed(totals, name, getattr(mod, attr)))
    step_totals: dict[str, float] = defaultdict(float)
    original_step = steps_module.train_step
    steps_module.train_step = _timed(step_totals, "train_step", original_step)

    def instrument(trainer: Any) -> None:
        trainer.publish = _timed(totals, "publish", trainer.publish)
        trainer.governor.take_snapshot = _timed(totals, "governor_snapshot", trainer.governor.take_snapshot)
        trainer.run_epoch = _timed(totals, "epoch_total", trainer.run_epoch)

    try:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.process_time()
            tolaria_run(
                task, config, Path(out), kasmina=KASMINA, policy=lambda _m: StaticPolicy(), on_trainer=instrument
            )
            totals["run_total"] = time.process_time() - t0
    finally:
        for mod, attr, fn in originals:
            setattr(mod, attr, fn)
        steps_module.train_step = original_step
    totals["train_step_calls"] = step_totals["train_step"]
    totals["train_loop_outside_steps"] = totals["train_steps"] - step_totals["train_step"]
    return {k: round(1000 * v / config.epochs, 3) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--health-every", type=int, default=10, help="layer health every N epochs (sparse arm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task("mnist1d", host_channels=25)
    every_epoch = TrainerConfig(epochs=args.epochs, lr_schedule="anneal", seed=args.seed, checkpoint_every=1)
    sparse = TrainerConfig(
        epochs=args.epochs,
        lr_schedule="anneal",
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        health_every=args.health_every,
    )
    bare_run(task, every_epoch)  # warm up both paths (allocator, first-call costs) off the record
    _tolaria(task, every_epoch)
    rounds: list[dict[str, Any]] = []
    for i in range(args.repeats):
        bare = bare_run(task, every_epoch)
        tol = _tolaria(task, every_epoch)
        tol_sparse = _tolaria(task, sparse)
        rounds.append({"bare": bare, "tolaria": tol, "tolaria_sparse": tol_sparse})
        print(
            f"round {i}: bare {bare.seconds:.2f}s, tolaria {tol.seconds:.2f}s ({tol.seconds / bare.seconds:.3f}x), "
            f"checkpoint and health every {args.checkpoint_every}/{args.health_every}: {tol_sparse.seconds:.2f}s "
            f"({tol_sparse.seconds / bare.seconds:.3f}x); cpu ratios {tol.cpu_seconds / bare.cpu_seconds:.3f}x, "
            f"{tol_sparse.cpu_seconds / bare.cpu_seconds:.3f}x",
            file=sys.stderr,
            flush=True,
        )
    parts = breakdown(task, every_epoch)
    bare_ms = 1000 * statistics.median(r["bare"].cpu_seconds for r in rounds) / args.epochs
    print(json.dumps({"cpu_ms_per_epoch": parts, "bare_cpu_ms_per_epoch": round(bare_ms, 3)}), file=sys.stderr)
    last = rounds[-1]
    result = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "tolaria_over_bare": statistics.median(r["tolaria"].seconds / r["bare"].seconds for r in rounds),
        "sparse": {"checkpoint_every": args.checkpoint_every, "health_every": args.health_every},
        "tolaria_sparse_over_bare": statistics.median(r["tolaria_sparse"].seconds / r["bare"].seconds for r in rounds),
        "tolaria_over_bare_cpu": statistics.median(r["tolaria"].cpu_seconds / r["bare"].cpu_seconds for r in rounds),
        "tolaria_sparse_over_bare_cpu": statistics.median(
            r["tolaria_sparse"].cpu_seconds / r["bare"].cpu_seconds for r in rounds
        ),
        "median_seconds": {
            name: round(statistics.median(r[name].seconds for r in rounds), 3)
            for name in ("bare", "tolaria", "tolaria_sparse")
        },
        "same_final_test_accuracy": last["bare"].final_test_accuracy == last["tolaria"].final_test_accuracy,
        "final_test_accuracy": {name: last[name].final_test_accuracy for name in ("bare", "tolaria")},
        "bare_cpu_ms_per_epoch": round(bare_ms, 3),
        "tolaria_cpu_ms_per_epoch_by_part": parts,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
