"""Growth benchmark on MNIST-1D: static small host vs Esper (heuristic) vs a static ~5k CNN.

Each arm trains with the reference budget of the MNIST-1D paper (Adam 1e-2,
batch 100, EPOCHS epochs of 38 steps ~ 6,000 steps) over SEEDS seeds, on the
3,800 training rows left after the 200-row validation split; every decision
reads the validation split only. Every arm uses the same ``anneal`` schedule:
the constant reference rate for 85% of the steps, then a short cosine tail, so
that no arm's final accuracy is one random draw from constant-rate noise while
the long constant phase keeps the reference budget (``--schedule`` compares the
alternatives). Progress goes to stderr; the last stdout
line is JSON: {"static_small": {...}, "heuristic": {...}, "static_5k": {...}}
with each arm's median final validation accuracy (what the heuristic's defaults
were tuned on), median final test accuracy (reported, never tuned on) and
median final parameter count.

    .venv/bin/python benchmarks/growth.py [--seeds 5] [--epochs 158] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from esper.tolaria.schedule import LR_SCHEDULES

ARMS = {
    "static_small": {"policy": "none"},
    "heuristic": {"policy": "heuristic", "param_budget": 5210},
    "static_5k": {"policy": "none", "host_channels": 25},
}


def one(arm: str, seed: int, epochs: int, schedule: str) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    from esper.tolaria.runs import RunSpec, run

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        report = run(RunSpec(epochs=epochs, seed=seed, lr_schedule=schedule, **ARMS[arm]), Path(out), progress=False)
    seeds = [e for e in report["seed_events"] if e["to"] in ("GERMINATED", "FOSSILIZED", "CULLED")]
    result = {
        "arm": arm,
        "seed": seed,
        "final_val_accuracy": report["final_val_accuracy"],
        "final_test_accuracy": report["final_test_accuracy"],
        "best_val_accuracy": report["best_val_accuracy"],
        "params_final": report["params_final"],
        "seed_events": [f"e{e['epoch']} {e['slot']} {e['blueprint']} {e['to']}" for e in seeds],
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=158)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--schedule", choices=LR_SCHEDULES, default="anneal", help="LR schedule of every arm")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown} (known: {', '.join(ARMS)})")
    jobs = [(arm, seed) for seed in range(args.seeds) for arm in arms]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(one, *zip(*jobs, strict=True), [args.epochs] * len(jobs), [args.schedule] * len(jobs)))
    summary = {}
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        summary[arm] = {
            "median_final_val_accuracy": statistics.median(r["final_val_accuracy"] for r in runs),
            "median_final_test_accuracy": statistics.median(r["final_test_accuracy"] for r in runs),
            "median_params_final": statistics.median(r["params_final"] for r in runs),
            "final_val_accuracies": [round(r["final_val_accuracy"], 4) for r in runs],
            "final_test_accuracies": [round(r["final_test_accuracy"], 4) for r in runs],
            "params_final": [r["params_final"] for r in runs],
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 1),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
