"""Convolutional blueprints for conv1d (C, L) and conv2d (C, H, W) features.

Every one keeps the feature shape: odd kernels with ``padding = k // 2``,
stride 1, and a zero-initialized last layer inside a residual.
"""

from __future__ import annotations

from torch import nn

from esper.kasmina.blueprints.modules import ChannelGate, Residual, zero_
from esper.kasmina.blueprints.registry import BlueprintSpec, Resolved, register, require

CONV_KINDS = ("conv1d", "conv2d")


def _conv(r: Resolved, cin: int, cout: int, kernel: int, groups: int = 1) -> nn.Module:
    layer = nn.Conv1d if r.spatial_dims == 1 else nn.Conv2d
    return layer(cin, cout, kernel, padding=kernel // 2, groups=groups)


def _kernel(r: Resolved, name: str) -> int:
    k = int(r.config["kernel_size"])
    require(k >= 1 and k % 2 == 1, name, f"config kernel_size={k} must be a positive odd integer (keeps the shape)")
    return k


def _expanded(r: Resolved, name: str) -> int:
    expansion = float(r.config["expansion"])
    require(expansion > 0, name, f"config expansion={expansion} must be > 0")
    return max(1, round(r.channels * expansion))


def _reduced(r: Resolved, name: str) -> int:
    reduction = int(r.config["reduction"])
    require(reduction >= 1, name, f"config reduction={reduction} must be >= 1")
    require(
        reduction <= r.channels, name, f"config reduction={reduction} exceeds the {r.channels} channels of {r.shape}"
    )
    return r.channels // reduction


# conv_light: one same-width convolution.
def _light_count(r: Resolved) -> int:
    c, kk = r.channels, _kernel(r, "conv_light") ** r.spatial_dims
    return c * c * kk + c


def _light_make(r: Resolved) -> nn.Module:
    c = r.channels
    return Residual(zero_(_conv(r, c, c, _kernel(r, "conv_light"))))


# conv_heavy: conv to a wider hidden layer, ReLU, conv back.
def _heavy_count(r: Resolved) -> int:
    c, w, kk = r.channels, _expanded(r, "conv_heavy"), _kernel(r, "conv_heavy") ** r.spatial_dims
    return c * w * kk + w + w * c * kk + c


def _heavy_make(r: Resolved) -> nn.Module:
    c, w, k = r.channels, _expanded(r, "conv_heavy"), _kernel(r, "conv_heavy")
    return Residual(nn.Sequential(_conv(r, c, w, k), nn.ReLU(), zero_(_conv(r, w, c, k))))


# depthwise: depthwise-separable convolution (per-channel spatial conv, ReLU, pointwise mix).
def _depthwise_count(r: Resolved) -> int:
    c, kk = r.channels, _kernel(r, "depthwise") ** r.spatial_dims
    return c * kk + c + c * c + c


def _depthwise_make(r: Resolved) -> nn.Module:
    c, k = r.channels, _kernel(r, "depthwise")
    return Residual(nn.Sequential(_conv(r, c, c, k, groups=c), nn.ReLU(), zero_(_conv(r, c, c, 1))))


# se_attention: squeeze-excitation channel attention.
def _se_count(r: Resolved) -> int:
    c, h = r.channels, _reduced(r, "se_attention")
    return c * h + h + h * c + c


def _se_make(r: Resolved) -> nn.Module:
    gate = ChannelGate(r.channels, _reduced(r, "se_attention"), r.spatial_dims)
    zero_(gate.fc2)
    return Residual(gate)


# bottleneck: 1x1 down, k x k, 1x1 up.
def _bottleneck_count(r: Resolved) -> int:
    c, b, kk = r.channels, _reduced(r, "bottleneck"), _kernel(r, "bottleneck") ** r.spatial_dims
    return c * b + b + b * b * kk + b + b * c + c


def _bottleneck_make(r: Resolved) -> nn.Module:
    c, b, k = r.channels, _reduced(r, "bottleneck"), _kernel(r, "bottleneck")
    body = nn.Sequential(_conv(r, c, b, 1), nn.ReLU(), _conv(r, b, b, k), nn.ReLU(), zero_(_conv(r, b, c, 1)))
    return Residual(body)


register(
    BlueprintSpec(
        "conv_light",
        CONV_KINDS,
        {"kernel_size": 3},
        _light_count,
        _light_make,
        description="one same-width convolution",
    )
)
register(
    BlueprintSpec(
        "conv_heavy",
        CONV_KINDS,
        {"kernel_size": 3, "expansion": 2.0},
        _heavy_count,
        _heavy_make,
        description="two convolutions through a hidden layer `expansion` times wider",
    )
)
register(
    BlueprintSpec(
        "depthwise",
        CONV_KINDS,
        {"kernel_size": 5},
        _depthwise_count,
        _depthwise_make,
        description="depthwise-separable convolution",
    )
)
register(
    BlueprintSpec(
        "se_attention",
        CONV_KINDS,
        {"reduction": 2},
        _se_count,
        _se_make,
        description="squeeze-excitation channel attention",
    )
)
register(
    BlueprintSpec(
        "bottleneck",
        CONV_KINDS,
        {"kernel_size": 3, "reduction": 2},
        _bottleneck_count,
        _bottleneck_make,
        description="1x1 down to channels // reduction, k x k, 1x1 up",
    )
)
