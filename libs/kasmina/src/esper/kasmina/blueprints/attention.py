"""``attention``: a residual self-attention seed for sequence (T, D) features.

Token mixing is what a sequence slot can add that the per-token ``mlp`` and
``lowrank`` seeds cannot: each position reads every other one. The output
projection starts at zero, so a fresh seed is the identity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina.blueprints.modules import Residual, zero_
from esper.kasmina.blueprints.registry import BlueprintSpec, Resolved, register, require


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over the time axis.

    Input and output: (N, T, D). ``heads`` must divide ``D``. Plain torch
    operations only, so :func:`esper.kasmina.export` traces it.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, D / heads)
        return self.out(mixed.transpose(1, 2).reshape(n, t, d))


def _heads(r: Resolved) -> int:
    heads = r.config["heads"]
    require(
        isinstance(heads, int) and heads >= 1 and r.channels % heads == 0,
        "attention",
        f"config heads={heads!r} must be a positive integer dividing the {r.channels} features of {r.shape}",
    )
    return int(heads)


def _check(r: Resolved) -> None:
    _heads(r)


def _count(r: Resolved) -> int:
    d = r.channels
    return 4 * d * d + 4 * d


def _make(r: Resolved) -> nn.Module:
    attention = SelfAttention(r.channels, _heads(r))
    zero_(attention.out)
    return Residual(attention)


register(
    BlueprintSpec(
        "attention",
        ("sequence",),
        {"heads": 1},
        _count,
        _make,
        check=_check,
        description="residual multi-head self-attention across the sequence",
    )
)
