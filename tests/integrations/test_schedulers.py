"""Seed groups added to (and removed from) an optimizer that a learning-rate scheduler drives.

Every scheduler PyTorch ships is driven through a run with a seed group added
part-way and another removed: it must keep stepping, and move the seed group's
rate exactly as the host's, ``ratio`` times as large.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as sched

from esper.integrations.schedulers import add_group, remove_groups

HOST_LR = 0.1

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda e: 0.95),
    "StepLR": lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[4, 9], gamma=0.3),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=6),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=6),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=15, power=2.0),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=4),  # restarts inside the run
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=4),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=HOST_LR, step_size_up=3),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=HOST_LR, total_steps=20),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, start_factor=0.1, total_iters=3), sched.CosineAnnealingLR(o, T_max=10)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.ExponentialLR(o, gamma=0.95), sched.LambdaLR(o, lambda e: 1.0 / (1 + e))]
    ),
}


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(3))


def _step(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    optimizer.step()
    if isinstance(scheduler, sched.ReduceLROnPlateau):
        scheduler.step(1.0)  # never improves: the rate halves every step
    else:
        scheduler.step()


@pytest.mark.parametrize("ratio", [1.0, 0.25])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_seed_group_follows_the_host_s_schedule_at_its_ratio(name: str, ratio: float) -> None:
    host = _param()
    optimizer = torch.optim.SGD([host], lr=HOST_LR, momentum=0.9)
    scheduler = SCHEDULERS[name](optimizer)
    for _ in range(5):
        _step(optimizer, scheduler)
    first, second = _param(), _param()
    add_group(optimizer, [first], [scheduler], ratio=ratio)
    add_group(optimizer, [second], [scheduler], ratio=ratio)
    for step in range(15):
        if step == 4:  # a seed culled mid-run: its group and its scheduler entries go
            assert remove_groups(optimizer, [first], [scheduler]) == [1]
        _step(optimizer, scheduler)
        host_lr, *seed_lrs = (float(g["lr"]) for g in optimizer.param_groups)
        for seed_lr in seed_lrs:
            assert math.isclose(seed_lr, ratio * host_lr, rel_tol=1e-6, abs_tol=1e-12), (step, host_lr, seed_lr)
    assert len(optimizer.param_groups) == 2 and len(scheduler.get_last_lr()) == 2


def test_without_the_scheduler_s_entries_lambda_lr_breaks_at_its_next_step() -> None:
    """Why the entries matter: what adding a group as Lightning users do by hand leads to."""
    optimizer = torch.optim.SGD([_param()], lr=HOST_LR)
    scheduler = sched.LambdaLR(optimizer, lambda e: 0.9**e)
    optimizer.add_param_group({"params": [_param()], "lr": HOST_LR})
    optimizer.step()
    with pytest.raises(ValueError, match="zip"):
        scheduler.step()


def test_a_group_without_a_scheduler_gets_the_host_s_rate_times_the_ratio() -> None:
    optimizer = torch.optim.Adam([_param()], lr=3e-3, weight_decay=0.01)
    group = add_group(optimizer, [_param()], ratio=2.0)
    assert group["lr"] == pytest.approx(6e-3) and group["weight_decay"] == 0.01 and "initial_lr" not in group
    assert remove_groups(optimizer, group["params"]) == [1] and len(optimizer.param_groups) == 1


def test_removing_a_group_drops_its_optimizer_state() -> None:
    host, seed = _param(), _param()
    optimizer = torch.optim.Adam([host], lr=1e-2)
    add_group(optimizer, [seed])
    for p in (host, seed):
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert seed in optimizer.state
    remove_groups(optimizer, [seed])
    assert seed not in optimizer.state and host in optimizer.state
