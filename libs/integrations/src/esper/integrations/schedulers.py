"""Seed parameter groups in an optimizer that learning-rate schedulers drive.

A PyTorch scheduler sizes its per-group state when it is made: ``base_lrs``
and ``_last_lr`` always, and, depending on the scheduler, ``lr_lambdas``
(LambdaLR, MultiplicativeLR), ``min_lrs`` (ReduceLROnPlateau), ``max_lrs`` and
the momentum bounds (CyclicLR), and lr-valued keys inside each group (OneCycleLR).
A group added afterwards is missing from all of them, and the schedulers zip
their lists strictly with the optimizer's groups: LambdaLR raises at its next
step, closed-form steps of the others skip the group or raise. So a seed group
is added through :func:`add_group` and removed through :func:`remove_groups`,
which keep every scheduler on that optimizer (SequentialLR's and
ChainedScheduler's children included) the same size as its groups.

A seed group copies the host's group (group 0) with its rates scaled by
``ratio``: the seeds' base rate over the host's. Every scheduler then moves the
seed group's rate exactly as it moves the host's, ``ratio`` times as large, from
the host's point in the schedule: a seed added mid-run joins at the schedule's
current factor, not at its base rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

#: Per-group lists a scheduler may keep, and whether the entry is a rate (scaled by ``ratio`` for a new group).
PER_GROUP_LISTS = {
    "base_lrs": True,
    "_last_lr": True,
    "max_lrs": True,
    "lr_lambdas": False,
    "min_lrs": False,
    "base_momentums": False,
    "max_momentums": False,
}
#: Rate-valued keys a group may hold for its scheduler (``initial_lr``: every scheduler; the others: OneCycleLR).
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def _tree(schedulers: Iterable[Any]) -> Iterator[Any]:
    for scheduler in schedulers:
        yield scheduler
        yield from _tree(getattr(scheduler, "_schedulers", ()))  # SequentialLR, ChainedScheduler


def _on(optimizer: torch.optim.Optimizer, schedulers: Iterable[Any]) -> list[Any]:
    return [s for s in _tree(schedulers) if getattr(s, "optimizer", None) is optimizer]


def add_group(
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    schedulers: Iterable[Any] = (),
    *,
    ratio: float = 1.0,
) -> dict[str, Any]:
    """Add a group of ``params`` to ``optimizer``: group 0's settings, its rates times ``ratio``; each of
    ``schedulers`` that drives ``optimizer`` gets the new group's entries. Returns the new group."""
    host = optimizer.param_groups[0]
    before = len(optimizer.param_groups)
    group = {k: (v * ratio if k in RATE_KEYS else v) for k, v in host.items() if k != "params"}
    optimizer.add_param_group({**group, "params": params})
    for scheduler in _on(optimizer, schedulers):
        for name, is_rate in PER_GROUP_LISTS.items():
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == before:
                values.append(values[0] * ratio if is_rate else values[0])
    return optimizer.param_groups[-1]


def remove_groups(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], schedulers: Iterable[Any] = ()
) -> list[int]:
    """Remove the groups holding any of ``params`` from ``optimizer``, with their state and their entries in
    each of ``schedulers`` that drives it. Returns the removed groups' indexes."""
    gone = {id(p) for p in params}
    before = len(optimizer.param_groups)
    removed = [i for i, g in enumerate(optimizer.param_groups) if gone & {id(p) for p in g["params"]}]
    for i in removed:
        for p in optimizer.param_groups[i]["params"]:
            optimizer.state.pop(p, None)
    optimizer.param_groups[:] = [g for i, g in enumerate(optimizer.param_groups) if i not in removed]
    for scheduler in _on(optimizer, schedulers):
        for name in PER_GROUP_LISTS:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == before:
                values[:] = [v for i, v in enumerate(values) if i not in removed]
    return removed


__all__ = ["PER_GROUP_LISTS", "RATE_KEYS", "add_group", "remove_groups"]
