"""Blueprints: recipes for seed modules, built from a slot's per-sample feature shape and a config.

Importing this package registers the catalogue: conv_light, conv_heavy,
depthwise, se_attention, bottleneck (conv1d/conv2d), mlp, lowrank
(linear/sequence), attention (sequence) and norm (every kind).
"""

from esper.kasmina.blueprints import attention, conv, dense
from esper.kasmina.blueprints.modules import ChannelGate, Residual
from esper.kasmina.blueprints.registry import (
    LAYER_KIND_RANK,
    Blueprint,
    BlueprintSpec,
    get_blueprint,
    list_blueprints,
    register,
)

__all__ = [
    "LAYER_KIND_RANK",
    "Blueprint",
    "BlueprintSpec",
    "ChannelGate",
    "Residual",
    "attention",
    "conv",
    "dense",
    "get_blueprint",
    "list_blueprints",
    "register",
]
