"""Evaluation: full passes over a split, counterfactual seed measurement, layer health.

Counterfactuals are measured on the validation split: the same batches with
the seed in and with it switched off (``model.seed_disabled``), so the
difference is the seed's worth and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esper.leyline import LayerHealthReport, SeedStage
from esper.tolaria.objective import CLASSIFICATION, Objective
from esper.tolaria.tasks import Split


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Mean loss and score over a split (cross-entropy and accuracy unless the task's objective says otherwise)."""

    loss: float
    accuracy: float


@dataclass(frozen=True, slots=True)
class SeedMeasurement:
    """What the counterfactual passes measured for one slot (Kasmina's record_metrics terms)."""

    improvement: float
    contribution: float
    contribution_loss: float


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, objective: Objective = CLASSIFICATION
) -> Evaluation:
    """Full pass over ``split`` in eval mode (restores the previous mode), scored by ``objective``."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = model(x)
        total_loss += objective.loss_sum(logits, y).item()
        correct += objective.score_sum(logits, y).item()
    model.train(was_training)
    n = max(len(split), 1)
    return Evaluation(total_loss / n, correct / n)


def measure_seed(
    model: nn.Module,
    slot_id: str,
    split: Split,
    current: Evaluation,
    batch_size: int = 1000,
    objective: Objective = CLASSIFICATION,
) -> SeedMeasurement:
    """Counterfactual worth of the seed in ``slot_id`` on ``split``.

    ``improvement``: loss without the seed minus loss with it at alpha 1.
    ``contribution`` / ``contribution_loss``: accuracy with the seed at its current
    alpha (alpha 1 while TRAINING, whose forward value is the host's) minus without,
    and loss without minus with. ``current`` is the plain evaluation of the model.
    """
    with model.seed_disabled(slot_id):
        without = evaluate(model, split, batch_size, objective)
    with model.alpha_override(slot_id, 1.0):
        full = evaluate(model, split, batch_size, objective)
    stage = SeedStage(model.slots[slot_id].stage)
    with_seed = full if stage is SeedStage.TRAINING else current
    return SeedMeasurement(
        improvement=without.loss - full.loss,
        contribution=with_seed.accuracy - without.accuracy,
        contribution_loss=without.loss - with_seed.loss,
    )


#: Validation rows layer health is measured on.
HEALTH_ROWS = 256


class LayerCapture:
    """Holds, while entered, the outputs of each slot's host layer in the model's next forward (its first
    ``rows`` rows), so layer health can be read off a forward that runs anyway (the validation pass).

    ``layers`` maps slot ids to dotted module names of ``model.host``. Later forwards are not captured.
    """

    def __init__(self, model: nn.Module, layers: dict[str, str], rows: int = HEALTH_ROWS) -> None:
        self.model, self.layers, self.rows = model, layers, rows
        self.captured: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerCapture:
        modules = dict(self.model.host.named_modules())  # type: ignore[operator]
        for slot_id, name in self.layers.items():

            def hook(_module: nn.Module, _inputs: object, output: torch.Tensor, slot_id: str = slot_id) -> None:
                if slot_id not in self.captured:
                    self.captured[slot_id] = output.detach()[: self.rows]

            self._handles.append(modules[name].register_forward_hook(hook))
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reports(self) -> list[LayerHealthReport]:
        """Layer health from the captured outputs (see :func:`layer_health`)."""
        modules = dict(self.model.host.named_modules())  # type: ignore[operator]
        # every statistic of every layer in one tensor, read back with one host sync
        stats = []
        for slot_id, name in self.layers.items():
            h = self.captured[slot_id].float()
            variance, mean = torch.var_mean(h) if h.numel() > 1 else (h.new_zeros(()), h.mean())
            unit_max = h.amax(dim=[d for d in range(h.dim()) if d != 1]) if h.dim() > 1 else h.amax().reshape(1)
            grads = [p.grad for p in modules[name].parameters() if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else h.new_zeros(())
            dead = (unit_max <= 0).float().mean()
            errors = (~torch.isfinite(h)).sum().float()
            stats.append(torch.stack([mean, variance, dead, grad_norm.float(), errors]))
        values = torch.stack(stats).tolist() if stats else []
        return [
            LayerHealthReport(
                layer=f"{slot_id}:{name}",
                activation_mean=mean,
                activation_variance=variance,
                dead_ratio=dead,
                grad_norm=grad_norm,
                error_count=int(errors),
            )
            for (slot_id, name), (mean, variance, dead, grad_norm, errors) in zip(
                self.layers.items(), values, strict=True
            )
        ]


@torch.no_grad()
def layer_health(model: nn.Module, layers: dict[str, str], x: torch.Tensor) -> list[LayerHealthReport]:
    """Activation statistics at each slot's host layer on inputs ``x`` (N, ...), from a forward of its own.

    ``layers`` maps slot ids to dotted module names of ``model.host``. Units are
    channels (dim 1); ``dead_ratio`` is the fraction of units never positive on ``x``;
    ``grad_norm`` is the norm of the gradients left on the layer's parameters by the
    last training step (0 for parameter-free layers such as activations).
    """
    was_training = model.training
    model.eval()
    try:
        with LayerCapture(model, layers, len(x)) as capture:
            model(x)
    finally:
        model.train(was_training)
    return capture.reports()
