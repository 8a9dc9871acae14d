"""What a run optimizes and how it is scored: the loss, and the score every decision reads.

Tolaria, its gates and Tamiyo read one number per split as "accuracy" (the
tracker's best, a seed's counterfactual contribution). For classification it
is accuracy; for regression it is R² against the training targets' variance,
which likewise rises to 1 for a perfect model, so the same gate thresholds
mean "a point of the score" on both. Scores are sums over samples so that a
split is scored batch by batch with no second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.nn import functional as F

ObjectiveName = Literal["classification", "regression"]


class Objective:
    """Classification: cross-entropy over logits (N, classes) and int64 labels (N,); score = accuracy."""

    name = "classification"
    score_name = "accuracy"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (what is back-propagated)."""
        return F.cross_entropy(output, target)

    def loss_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The summed loss of a batch (evaluation adds batches, then divides by the split's size)."""
        return F.cross_entropy(output, target, reduction="sum")

    def score_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The summed per-sample score of a batch (correct predictions), a 0-d tensor without a graph."""
        return (output.argmax(dim=1) == target).sum()


class Regression(Objective):
    """Mean squared error; score = R² = 1 - squared error / ``variance`` (per sample, summed over outputs).

    ``variance`` is the training targets' total variance (the mean of an
    output's targets scores 0). Targets (N,) or (N, k) are reshaped to the
    model's output when they hold the same number of values, so a model that
    returns (N, 1) learns (N,) targets without broadcasting them.
    """

    name = "regression"
    score_name = "r2"

    def __init__(self, variance: float) -> None:
        if not variance > 0:
            raise ValueError(f"field 'variance': the training targets must vary (value {variance!r})")
        self.variance = float(variance)

    @staticmethod
    def _aligned(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.shape != target.shape and output.numel() == target.numel():
            return target.reshape(output.shape)
        return target

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, self._aligned(output, target))

    def loss_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # per sample: the squared error summed over outputs, so the mean over samples is comparable to the score
        return F.mse_loss(output, self._aligned(output, target), reduction="sum") / _outputs(output)

    def score_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.detach()  # a score is read, never back-propagated: keep no graph alive across steps
        errors = (output - self._aligned(output, target)).pow(2).reshape(output.shape[0], -1).sum(dim=1)
        return (1.0 - errors / self.variance).sum()

    @classmethod
    def fitted(cls, targets: torch.Tensor) -> Regression:
        """R² against these training targets (N,) or (N, k)."""
        flat = targets.float().reshape(targets.shape[0], -1)
        return cls(float(flat.var(dim=0, unbiased=False).sum()))


def _outputs(output: torch.Tensor) -> int:
    return max(1, output[0].numel()) if output.shape[0] else 1


#: The objective of the built-in tasks.
CLASSIFICATION = Objective()

#: A user metric: (outputs (N, ...), targets (N, ...)) of a whole split -> a number.
Metric = Callable[[torch.Tensor, torch.Tensor], float]
