"""bf16 autocast against float32: the same grown runs side by side, wall time and accuracy.

Each seed runs the default job (the heuristic asked per slot, joint seeds) once
with ``precision="fp32"`` and once with ``"bf16"``, alternating which goes first,
on one device (``--device``, default ``auto``: the GPU where there is one). It
prints each pair, then the median wall-time ratio bf16 / fp32 (of the per-seed
ratios: on shared cores a pair shares its neighbours) and the paired difference
in final test accuracy with a bootstrap 95% interval. The two precisions may
grow different networks (the policy reads validation numbers, which bfloat16
rounds differently), and then the pair's wall times compare different networks:
the ratio is also given over the pairs that ended at the same parameter count.
The last stdout line is JSON.

bfloat16 pays on GPUs with bfloat16 tensor cores (Ampere and newer) and on
models large enough for matrix products to dominate a step; on a CPU without
bfloat16 instructions, or on MNIST-1D's small default host, expect it to be no
faster. ``--host-channels`` widens the host.

    .venv/bin/python benchmarks/precision.py [--seeds 3] [--epochs 20] [--device auto] [--host-channels 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from growth_summary import paired_difference

from esper.leyline import TrainingJob
from esper.tolaria.device import DEVICE_ENV, resolve_device
from esper.tolaria.runs import build_trainer


def one_run(job: TrainingJob, device: str) -> dict[str, Any]:
    trainer = build_trainer(job, kernels=None)
    assert trainer.device == resolve_device(device)
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    tests = [r.test_accuracy for r in trainer.history if not np.isnan(r.test_accuracy)]
    return {"wall_s": wall, "test_accuracy": tests[-1], "params": trainer.model.param_count()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host-channels", type=int, default=None)
    parser.add_argument("--max-train-samples", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ[DEVICE_ENV] = args.device  # TrainerConfig's default device
    device = resolve_device(args.device)
    rows, results = [], []
    for seed in range(args.seeds):
        order = ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32")
        pair: dict[str, dict[str, Any]] = {}
        for precision in order:
            job = TrainingJob(
                task=args.task,
                epochs=args.epochs,
                seed=seed,
                host_channels=args.host_channels,
                max_train_samples=args.max_train_samples,
                precision=precision,
            )
            pair[precision] = one_run(job, args.device)
            results.append({"arm": precision, "seed": seed, **pair[precision]})
        ratio = pair["bf16"]["wall_s"] / pair["fp32"]["wall_s"]
        same = pair["bf16"]["params"] == pair["fp32"]["params"]
        rows.append({"seed": seed, **{p: pair[p] for p in ("fp32", "bf16")}, "wall_ratio": ratio, "same_params": same})
        print(
            f"seed {seed}: fp32 {pair['fp32']['test_accuracy']:.4f} in {pair['fp32']['wall_s']:.1f} s, "
            f"bf16 {pair['bf16']['test_accuracy']:.4f} in {pair['bf16']['wall_s']:.1f} s "
            f"(x{ratio:.3f} wall), params {pair['fp32']['params']} / {pair['bf16']['params']}",
            flush=True,
        )
    same = [r["wall_ratio"] for r in rows if r["same_params"]]
    difference = paired_difference(results, "bf16", "fp32", "test_accuracy")
    assert difference is not None
    summary = {
        "device": str(device),
        "task": args.task,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "host_channels": args.host_channels,
        "wall_ratio_bf16_over_fp32": statistics.median(r["wall_ratio"] for r in rows),
        "wall_ratio_same_network": statistics.median(same) if same else None,
        "pairs_same_network": len(same),
        "test_accuracy_fp32": statistics.median(r["fp32"]["test_accuracy"] for r in rows),
        "test_accuracy_bf16": statistics.median(r["bf16"]["test_accuracy"] for r in rows),
        "bf16_minus_fp32": difference,
        "runs": rows,
    }
    same_text = (
        f"x{statistics.median(same):.3f} over the {len(same)} that grew the same size"
        if same
        else "none grew the same size"
    )
    ci = difference["ci95"]
    print(
        f"on {device}: bf16 / fp32 wall x{summary['wall_ratio_bf16_over_fp32']:.3f} (median of {args.seeds}; "
        f"{same_text}); test accuracy bf16 - fp32 {difference['median']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] "
        f"({difference['wins']} / {difference['losses']})"
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
