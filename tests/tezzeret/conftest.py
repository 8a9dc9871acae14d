"""Tezzeret fixtures: blueprints that cannot become kernels (registered once: Kasmina's registry is global)."""

from __future__ import annotations

import pytest
from torch import nn

from esper.kasmina.blueprints import BlueprintSpec, register
from esper.kasmina.blueprints.registry import _REGISTRY, Resolved

DROPOUT = "test_dropout_mlp"
BROKEN = "test_broken"


def _dropout(r: Resolved) -> nn.Module:
    return nn.Sequential(nn.Linear(r.channels, r.channels), nn.Dropout(0.5))


def _broken(r: Resolved) -> nn.Module:
    raise RuntimeError("this blueprint's recipe is broken")


def register_test_blueprints() -> None:
    if DROPOUT not in _REGISTRY:
        register(BlueprintSpec(DROPOUT, ("linear",), {}, lambda r: 2 * r.channels**2, _dropout))
    if BROKEN not in _REGISTRY:
        register(BlueprintSpec(BROKEN, ("linear",), {}, lambda r: 0, _broken))


@pytest.fixture(scope="session")
def bad_blueprints() -> tuple[str, str]:
    """(a blueprint with Dropout, a blueprint whose recipe raises), both registered in Kasmina."""
    register_test_blueprints()
    return DROPOUT, BROKEN
