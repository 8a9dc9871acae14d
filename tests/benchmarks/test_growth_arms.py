"""The growth benchmark's late oracle (``benchmarks/growth_arms.py``): a merged seed is absent until its step."""

from __future__ import annotations

import copy
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


def test_shrink_and_perturb_is_the_shrunk_weights_plus_a_scaled_fresh_init():
    torch.manual_seed(0)
    host = Host()
    before = [p.detach().clone() for p in host.parameters()]
    torch.manual_seed(1)
    fresh = [p.detach().clone() for p in arms.reinitialize(copy.deepcopy(host)).parameters()]
    torch.manual_seed(1)  # the same draws as the fresh copy above
    arms.shrink_perturb(host, 0.4, 0.1)
    for p, old, new in zip(host.parameters(), before, fresh, strict=True):
        torch.testing.assert_close(p, 0.4 * old + 0.1 * new)


def _slots(*stages):
    return {f"s{i}": SimpleNamespace(stage=stage.value) for i, stage in enumerate(stages)}


def test_shrink_and_perturb_happens_once_after_the_first_round_that_ends_settled_and_fully_grown():
    stage = arms.SeedStage
    host = Host()  # the trainer's model: its slots are set by each round below
    schedule = iter(
        [
            (_slots(stage.FOSSILIZED, stage.TRAINING), False),  # a seed still in flight
            (_slots(stage.FOSSILIZED, stage.FOSSILIZED), False),  # grown, but the boundary applied a command
            (_slots(stage.FOSSILIZED, stage.FOSSILIZED), True),  # grown and settled: shrink here
            (_slots(stage.FOSSILIZED, stage.FOSSILIZED), True),  # and never again
        ]
    )
    trainer = SimpleNamespace(model=host, quiet=False)

    def run_epoch():
        host.slots, trainer.quiet = next(schedule)
        return "record"

    trainer.run_epoch, trainer.settled = run_epoch, lambda: trainer.quiet
    arms.shrink_perturb_once_grown(0.5, 0.0)(trainer)
    weight = host.layer.weight.detach().clone()
    expected = [weight, weight, weight / 2, weight / 2]
    for after in expected:
        assert trainer.run_epoch() == "record"
        torch.testing.assert_close(host.layer.weight, after)


def test_chained_hooks_run_in_order_and_none_are_skipped():
    seen = []
    assert arms.chain_hooks(None, None) is None
    hook = arms.chain_hooks(lambda t: seen.append(("a", t)), None, lambda t: seen.append(("b", t)))
    hook("trainer")
    assert seen == [("a", "trainer"), ("b", "trainer")]
