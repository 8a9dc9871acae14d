"""Tezzeret fixtures: blueprints that cannot become kernels.

Kasmina's registry is global: each test that asks for them registers them and
removes them afterwards, so no other test (Urza's catalogue check) sees them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from esper.kasmina.blueprints import BlueprintSpec, register
from esper.kasmina.blueprints.registry import _REGISTRY, Resolved

DROPOUT = "test_dropout_mlp"
BROKEN = "test_broken"
DATA_DEPENDENT = "test_data_dependent"


class DataDependent(nn.Module):
    """A residual whose forward branches on a tensor's value: torch.export refuses, tracing records the branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().sum() >= 0):  # always true, but only known at run time
            return x + self.linear(x)
        return x


def _dropout(r: Resolved) -> nn.Module:
    return nn.Sequential(nn.Linear(r.channels, r.channels), nn.Dropout(0.5))


def _broken(r: Resolved) -> nn.Module:
    raise RuntimeError("this blueprint's recipe is broken")


def register_test_blueprints() -> None:
    if DROPOUT not in _REGISTRY:
        register(BlueprintSpec(DROPOUT, ("linear",), {}, lambda r: 2 * r.channels**2, _dropout))
    if BROKEN not in _REGISTRY:
        register(BlueprintSpec(BROKEN, ("linear",), {}, lambda r: 0, _broken))
    if DATA_DEPENDENT not in _REGISTRY:
        register(BlueprintSpec(DATA_DEPENDENT, ("linear",), {}, lambda r: r.channels**2 + r.channels, _data_dependent))


def _data_dependent(r: Resolved) -> nn.Module:
    return DataDependent(r.channels)


@pytest.fixture
def test_blueprints() -> Iterator[None]:
    """The test blueprints registered in Kasmina for one test, and gone after it."""
    register_test_blueprints()
    yield
    for name in (DROPOUT, BROKEN, DATA_DEPENDENT):
        _REGISTRY.pop(name, None)


@pytest.fixture
def bad_blueprints(test_blueprints: None) -> tuple[str, str]:
    """(a blueprint with Dropout, a blueprint whose recipe raises), both registered in Kasmina."""
    return DROPOUT, BROKEN


@pytest.fixture
def data_dependent_blueprint(test_blueprints: None) -> str:
    """A blueprint torch.export cannot compile but TorchScript tracing can."""
    return DATA_DEPENDENT
