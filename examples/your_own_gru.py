"""Grow your own GRU on a sequence task: scikit-learn's digits read row by row (8 steps of 8 pixels).

The host embeds each row (Linear + ReLU: a (T, D) sequence slot there), runs a
GRU, and maps its last state through Linear + ReLU (a vector slot) to the
classes. Static against the heuristic, export checked:

    python examples/your_own_gru.py --epochs 30
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

REFERENCE = "your_own_gru:make_task"
#: The training settings this host was run with (``benchmarks/hosts.py`` uses them too).
DEFAULTS: dict[str, Any] = dict(epochs=30, batch_size=64, lr=1e-2)


class RowGRU(nn.Module):
    """(N, 8, 8) rows -> Linear 16 + ReLU per row -> GRU 32 -> Linear 32 + ReLU -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.embed_act = nn.Linear(8, 16), nn.ReLU()
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.proj, self.proj_act = nn.Linear(32, 32), nn.ReLU()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed_act(self.embed(x)))
        return self.head(self.proj_act(self.proj(out[:, -1])))


def make_model() -> nn.Module:
    return RowGRU()


def make_task() -> Task:
    """Rows as time steps, pixels scaled to [0, 1]; a fixed fifth of the images is the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.images / 16.0).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:360], order[360:]
    return define_task(
        model=make_model,
        train=(x[train], y[train]),
        test=(x[test], y[test]),
        slots={"seq": "embed_act", "vec": "proj_act"},
        name="digits_rows_gru",
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
