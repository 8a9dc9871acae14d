"""Tezzeret fixtures: blueprints that cannot become kernels (registered once: Kasmina's registry is global)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def bad_blueprints() -> tuple[str, str]:
    """(a blueprint with Dropout, a blueprint whose recipe raises), both registered in Kasmina."""
    register_test_blueprints()
    return DROPOUT, BROKEN


@pytest.fixture(scope="session")
def data_dependent_blueprint() -> str:
    """A blueprint torch.export cannot compile but TorchScript tracing can."""
    register_test_blueprints()
    return DATA_DEPENDENT
