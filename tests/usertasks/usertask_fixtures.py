"""User modules the tests name by reference (``usertask_fixtures:make_task``), as a user's package would be."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from esper.tolaria.tasks import Task
from esper.tolaria.usertask import define_task


class RowModel(nn.Module):
    """(N, 8, 8) rows -> Linear 12 + ReLU (a sequence) -> mean over rows -> Linear 12 + ReLU (a vector) -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.act = nn.Linear(8, 12), nn.ReLU()
        self.proj, self.proj_act = nn.Linear(12, 12), nn.ReLU()
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.embed(x)).mean(dim=1)
        return self.head(self.proj_act(self.proj(h)))


def make_model() -> nn.Module:
    return RowModel()


def digits_rows(rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[:rows] / 16.0).astype(np.float32), digits.target[:rows]


def make_task() -> Task:
    x, y = digits_rows()
    return define_task(model=make_model, train=(x, y), slots={"seq": "act", "vec": "proj_act"}, name="rows")


def make_regression_task() -> Task:
    """scikit-learn's diabetes table (442 rows, 10 features): a regression with R² as the score, MAE as a metric."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))

    return define_task(
        model=model,
        train=(x, y),
        slots={"s1": "1"},
        objective="regression",
        metrics={"mae": lambda out, target: float((out.squeeze(1) - target).abs().mean())},
    )


def not_a_task() -> int:
    return 3
