"""Grow your own model on MNIST-1D: the conv host Esper's benchmarks use, brought in as a user task.

The data comes from the ``mnist1d`` package (generated locally, never
downloaded), the host is :class:`esper.kasmina.ConvHost1D` with 8 channels.
Static against the heuristic, export checked:

    python examples/your_own_mnist1d.py --epochs 30
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from esper.kasmina import ConvHost1D
from esper.tolaria.grow import static_vs_grown, summary
from esper.tolaria.tasks import Task
from esper.tolaria.usertask import define_task

REFERENCE = "your_own_mnist1d:make_task"
#: The training settings this host was run with (``benchmarks/hosts.py`` uses them too).
DEFAULTS: dict[str, Any] = dict(epochs=30, batch_size=100, lr=1e-2)


def make_model() -> nn.Module:
    return ConvHost1D(channels=8, num_classes=10, length=40)


def make_task() -> Task:
    """MNIST-1D's own train/test split; validation is carved from train by Tolaria (5%, as the built-in task)."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return define_task(
        model=make_model,
        train=(data["x"], data["y"]),
        test=(data["x_test"], data["y_test"]),
        slots=dict(ConvHost1D.DEFAULT_SLOTS),
        val_fraction=0.05,
        name="mnist1d_conv",
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
