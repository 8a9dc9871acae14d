"""Growing hosts nobody tuned Esper for: static against grown on the four "your own model" examples.

Hosts (``examples/your_own_*.py``, each a user task built with
``esper.tolaria.usertask.define_task``): an MLP on scikit-learn's breast-cancer
table, a 2-D CNN on scikit-learn's digits as 8x8 images, a GRU reading those
digits row by row (a sequence slot and a vector slot), and the MNIST-1D conv
host. Each host trains twice per seed through Tolaria (``esper.tolaria.grow``:
checkpoints, events, reports as ``esper train``), statically (policy ``none``)
and grown by the default heuristic, with the example's own epochs, batch size
and learning rate; the grown model is exported and the export's test score
checked against the trained model's.

Per host, the table shows the median over seeds of the final model's test
accuracy, static and grown, the parameters before and after growing, and the
blueprints fossilized (per seed). ``same arch`` answers "growth, or just more
parameters?": the grown run's exported architecture, every layer re-initialized
with its own PyTorch init (seeds included), trained statically by Tolaria with
the same seed, data and schedule. The last stdout line is JSON with the same
numbers and the per-seed lists. One torch thread (the hosts are tiny).

    .venv/bin/python benchmarks/hosts.py [--seeds 3] [--epochs N] [--hosts mlp,cnn,gru,mnist1d]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from esper.tolaria.evaluation import evaluate
from esper.tolaria.grow import Grown
from esper.tolaria.runs import KASMINA
from esper.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
HOSTS = {"mlp": "your_own_mlp", "cnn": "your_own_cnn", "gru": "your_own_gru", "mnist1d": "your_own_mnist1d"}


def retrain_architecture(grown: Grown) -> float:
    """Test score of the grown run's final architecture trained statically from a fresh init (same job)."""
    architecture = copy.deepcopy(grown.model)

    def build_host() -> torch.nn.Module:
        host = copy.deepcopy(architecture)
        for module in host.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return host

    task = dataclasses.replace(grown.trainer.task, build_host=build_host, slots={}, layouts={})
    trainer = Trainer(task, None, grown.trainer.config, kasmina=KASMINA)
    trainer.fit()
    return evaluate(trainer.model, task.test, objective=task.objective).accuracy


def run_host(name: str, seeds: int, epochs: int | None, out: Path) -> dict[str, object]:
    module = importlib.import_module(HOSTS[name])
    defaults = argparse.Namespace(**module.DEFAULTS)  # the example's own epochs, batch size and learning rate
    from esper.tolaria.grow import static_vs_grown

    rows = []
    for seed in range(seeds):
        started = time.perf_counter()
        runs = static_vs_grown(
            module.REFERENCE,
            out / f"{name}-s{seed}",
            epochs=epochs or defaults.epochs,
            seed=seed,
            batch_size=defaults.batch_size,
            lr=defaults.lr,
        )
        static, grown = runs["none"], runs["heuristic"]
        same_arch = retrain_architecture(grown)
        for g in (static, grown):
            if g.export_max_diff > 1e-5 or abs(g.export_test_score - g.model_test_score) > 1e-9:
                raise SystemExit(f"{name} seed {seed}: the export differs from the trained model")
        rows.append(
            {
                "seed": seed,
                "static": static.model_test_score,
                "grown": grown.model_test_score,
                "same_arch": same_arch,
                "params_before": grown.report["params_initial"],
                "params_after": grown.report["params_final"],
                "fossilized": [
                    f"{e['blueprint']}@{e['slot']}" for e in grown.report["seed_events"] if e["to"] == "FOSSILIZED"
                ],
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"{name} seed {seed}: {rows[-1]}", file=sys.stderr)
    median = statistics.median
    return {
        "host": name,
        "epochs": epochs or defaults.epochs,
        "static": median(r["static"] for r in rows),
        "grown": median(r["grown"] for r in rows),
        "same_arch": median(r["same_arch"] for r in rows),
        "gain": median(r["grown"] - r["static"] for r in rows),
        "params_before": median(r["params_before"] for r in rows),
        "params_after": median(r["params_after"] for r in rows),
        "seeds": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override every example's epochs")
    parser.add_argument("--hosts", default=",".join(HOSTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "examples"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.hosts.split(","):
            results.append(run_host(name, args.seeds, args.epochs, Path(tmp)))
    print(
        f"{'host':<8} {'epochs':>6} {'static acc':>10} {'grown acc':>10} {'gain':>7} {'same arch':>9} "
        f"{'params':>16}  fossilized"
    )
    for r in results:
        fossils = "; ".join(",".join(s["fossilized"]) or "-" for s in r["seeds"])
        print(
            f"{r['host']:<8} {r['epochs']:>6} {100 * r['static']:>9.1f}% {100 * r['grown']:>9.1f}% "
            f"{100 * r['gain']:>+6.1f} {100 * r['same_arch']:>8.1f}% "
            f"{r['params_before']:>7,} -> {r['params_after']:>6,}  {fossils}"
        )
    print(json.dumps({"seeds": args.seeds, "hosts": results}))


if __name__ == "__main__":
    main()
