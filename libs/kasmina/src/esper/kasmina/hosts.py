"""Reference host networks. Both trace with ``torch.fx`` and export with ``torch.export``."""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar

import torch
from torch import nn


def _conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class ConvHost1D(nn.Module):
    """The MNIST-1D ConvBase layout: three strided Conv1d + ReLU, then a linear classifier.

    Input (N, length) or (N, 1, length); output logits (N, num_classes).
    ``channels=8`` gives 858 parameters (room to grow), ``channels=25`` the
    reference 5,210. Slots sit after the activations (``DEFAULT_SLOTS``), where a
    residual seed sees the features the next layer will read.
    """

    DEFAULT_SLOTS: ClassVar[dict[str, str]] = {"s1": "act1", "s2": "act2", "s3": "act3"}

    def __init__(self, channels: int = 8, num_classes: int = 10, length: int = 40) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("num_classes", num_classes), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvHost1D: {name}={value!r} must be a positive integer")
        out = _conv_out(_conv_out(_conv_out(length, 5, 2, 1), 3, 2, 1), 3, 2, 1)
        if _conv_out(length, 5, 2, 1) < 1 or out < 1:
            raise ValueError(f"ConvHost1D: length={length} is too short for three strided convolutions")
        self.length = length
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(channels * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape, not a branch on x.dim(): (N, L) and (N, 1, L) both become (N, 1, L) and the graph stays traceable.
        x = x.reshape(x.shape[0], 1, self.length)
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.linear(self.flatten(x))


class MLPHost(nn.Module):
    """A ReLU MLP: ``depth`` hidden layers of width ``hidden``, then a linear head.

    Input (N, in_features) (or anything that flattens to it); output (N, num_classes).
    Submodules are ``body.fc{i}``, ``body.act{i}`` (i from 1) and ``head``.
    """

    def __init__(self, in_features: int, hidden: int, num_classes: int, depth: int = 2) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPHost: {name}={value!r} must be a positive integer")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"MLPHost: depth={depth!r} must be an integer >= 1")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(width, hidden)
            layers[f"act{i}"] = nn.ReLU()
            width = hidden
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(hidden, num_classes)
        self.default_slots = {f"s{i}": f"body.act{i}" for i in range(1, depth + 1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))
