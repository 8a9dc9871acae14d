"""Grow your own MLP on a tabular data set shipped with scikit-learn (breast cancer, 30 features, 2 classes).

Static host against the heuristic, both trained by Tolaria, the grown model
exported to a plain ``nn.Module`` and checked against the trained one:

    python examples/your_own_mlp.py --epochs 30

``esper slots your_own_mlp:make_model --input-shape 30`` (from this folder)
lists where else seeds could go; ``esper train --task your_own_mlp:make_task``
trains it from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from esper.tolaria.grow import static_vs_grown, summary
from esper.tolaria.tasks import Task
from esper.tolaria.usertask import define_task

REFERENCE = "your_own_mlp:make_task"
#: The training settings this host was run with (``benchmarks/hosts.py`` uses them too).
DEFAULTS: dict[str, Any] = dict(epochs=30, batch_size=32, lr=3e-3)


def make_model() -> nn.Module:
    """30 features -> 16 -> 16 -> 2 classes, ReLU after each hidden layer (where the slots sit)."""
    return nn.Sequential(
        nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )  # fmt: skip


def make_task() -> Task:
    """The data set split by scikit-learn's own arrays: test carved by Tolaria, features standardized on train."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:114], order[114:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    return define_task(
        model=make_model,
        train=((x[train] - mean) / std, y[train]),
        test=((x[test] - mean) / std, y[test]),
        slots={"s1": "1", "s2": "3"},  # the two ReLUs of the Sequential
        name="breast_cancer_mlp",
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _args(argv, **DEFAULTS)
    sys.path.insert(0, str(Path(__file__).parent))  # the job names this module by reference
    runs = static_vs_grown(REFERENCE, args.out, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                           lr=args.lr, max_train_samples=args.max_train_samples)  # fmt: skip
    result = summary(runs)
    print(json.dumps(result))
    return result


def _args(argv: Sequence[str] | None, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs") / REFERENCE.split(":")[0])
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
