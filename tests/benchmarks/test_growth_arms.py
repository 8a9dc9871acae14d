"""The growth benchmark's late oracle (``benchmarks/growth_arms.py``): a merged seed is absent until its step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _arms():
    spec = importlib.util.spec_from_file_location("growth_arms_under_test", BENCHMARKS / "growth_arms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


arms = _arms()


class Host(nn.Module):
    """A layer and a merged residual seed (``seed``: first layer, activation, last layer), as export leaves it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.seed = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return h + self.seed(h)


def test_a_late_seed_adds_nothing_and_learns_nothing_before_its_step_and_joins_at_it():
    torch.manual_seed(0)
    host, x = Host(), torch.randn(8, 3)
    trainer = SimpleNamespace(step=0, model=SimpleNamespace(host=host))
    arms.late_seeds({"seed": 5})(trainer)
    for step, joined in ((0, False), (4, False), (5, True), (9, True)):
        trainer.step = step
        host.zero_grad(set_to_none=True)
        out = host(x)
        out.sum().backward()
        with torch.no_grad():
            without = host.layer(x)
        assert torch.equal(out, without) is not joined
        assert (host.seed[0].weight.grad is not None) is joined  # no gradient reaches an absent seed
        assert host.layer.weight.grad is not None
