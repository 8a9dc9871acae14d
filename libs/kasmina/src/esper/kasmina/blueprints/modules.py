"""The torch modules blueprints are made of.

Every seed is residual, ``seed(h) = h + f(h)``, with the last layer of ``f``
zero-initialized so a fresh seed is the identity and blending starts smooth.
The classes here hold only torch operations in ``forward`` so that
:func:`esper.kasmina.export` can trace them into plain ``torch.fx`` graphs.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """``x + body(x)``. Shapes: any; ``body`` must preserve the shape of ``x``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ChannelGate(nn.Module):
    """Squeeze-excitation as a residual branch: ``x * tanh(fc2(relu(fc1(mean_spatial(x)))))``.

    Input and output: (N, C, *spatial) with ``spatial_dims`` trailing dimensions.
    ``tanh`` rather than the classic sigmoid so that a zero-initialized ``fc2``
    makes the branch exactly zero.
    """

    def __init__(self, channels: int, hidden: int, spatial_dims: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.flatten(2).mean(-1)
        gate = torch.tanh(self.fc2(torch.relu(self.fc1(squeezed))))
        for _ in range(self.spatial_dims):
            gate = gate.unsqueeze(-1)
        return x * gate


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias in place (the last layer of a residual branch)."""
    with torch.no_grad():
        for param in module.parameters(recurse=False):
            param.zero_()
    return module
