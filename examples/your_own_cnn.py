"""Grow your own 2-D CNN on scikit-learn's digits as 8x8 images (1,797 images, 10 classes).

Static host against the heuristic, both trained by Tolaria, the grown model
exported to a plain ``nn.Module`` and checked against the trained one:

    python examples/your_own_cnn.py --epochs 30
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from esper.tolaria.grow import static_vs_grown, summary
from esper.tolaria.tasks import Task
from esper.tolaria.usertask import define_task

REFERENCE = "your_own_cnn:make_task"
#: The training settings this host was run with (``benchmarks/hosts.py`` uses them too).
DEFAULTS: dict[str, Any] = dict(epochs=30, batch_size=64, lr=1e-2)


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> conv 8 -> ReLU -> pool -> conv 16 -> ReLU -> global mean -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.act2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(self.pool(self.act1(self.conv1(x)))))
        return self.head(x.mean(dim=(2, 3)))


def make_model() -> nn.Module:
    return DigitsCNN()


def make_task() -> Task:
    """Pixels scaled to [0, 1]; a fixed fifth of the images is the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images / 16.0).astype(np.float32)[:, None], digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:360], order[360:]
    return define_task(
        model=make_model,
        train=(x[train], y[train]),
        test=(x[test], y[test]),
        slots={"s1": "act1", "s2": "act2"},
        name="digits_cnn",
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
