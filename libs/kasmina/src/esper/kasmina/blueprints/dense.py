"""Blueprints for linear (D,) and sequence (T, D) features, plus ``norm`` for every kind.

Linear and sequence seeds act on the last dimension, so the same module serves
(N, D) and (N, T, D) inputs.
"""

from __future__ import annotations

from torch import nn

from esper.kasmina.blueprints.modules import Residual, zero_
from esper.kasmina.blueprints.registry import BlueprintSpec, Resolved, register, require

DENSE_KINDS = ("linear", "sequence")


def _hidden(r: Resolved) -> int:
    expansion = float(r.config["expansion"])
    require(expansion > 0, "mlp", f"config expansion={expansion} must be > 0")
    return max(1, round(r.channels * expansion))


def _mlp_count(r: Resolved) -> int:
    d, w = r.channels, _hidden(r)
    return d * w + w + w * d + d


def _mlp_make(r: Resolved) -> nn.Module:
    d, w = r.channels, _hidden(r)
    return Residual(nn.Sequential(nn.Linear(d, w), nn.GELU(), zero_(nn.Linear(w, d))))


def _check_rank(r: Resolved) -> None:
    rank = r.config["rank"]
    require(
        isinstance(rank, int) and 1 <= rank <= r.channels,
        "lowrank",
        f"config rank={rank!r} must be an integer in [1, {r.channels}] for features {r.shape}",
    )


def _lowrank_count(r: Resolved) -> int:
    return 2 * r.channels * int(r.config["rank"])


def _lowrank_make(r: Resolved) -> nn.Module:
    d, rank = r.channels, int(r.config["rank"])
    # LoRA-style: A random, B zero, so the adapter starts as the identity and still learns.
    return Residual(nn.Sequential(nn.Linear(d, rank, bias=False), zero_(nn.Linear(rank, d, bias=False))))


def _check_groups(r: Resolved) -> None:
    groups = int(r.config["groups"])
    if r.kind.startswith("conv"):
        require(
            groups >= 1 and r.channels % groups == 0,
            "norm",
            f"config groups={groups} must divide the {r.channels} channels of {r.shape}",
        )
    else:
        require(groups == 1, "norm", f"config groups={groups}: {r.kind} features use LayerNorm (groups must be 1)")


def _norm_count(r: Resolved) -> int:
    return 2 * r.channels


def _norm_make(r: Resolved) -> nn.Module:
    c = r.channels
    norm: nn.Module = nn.GroupNorm(int(r.config["groups"]), c) if r.kind.startswith("conv") else nn.LayerNorm(c)
    # Zero affine weight and bias: the normalized branch starts at exactly zero.
    return Residual(zero_(norm))


register(
    BlueprintSpec(
        "mlp",
        DENSE_KINDS,
        {"expansion": 2.0},
        _mlp_count,
        _mlp_make,
        description="two-layer MLP through a hidden layer `expansion` times wider",
    )
)
register(
    BlueprintSpec(
        "lowrank",
        DENSE_KINDS,
        {"rank": 4},
        _lowrank_count,
        _lowrank_make,
        check=_check_rank,
        description="low-rank adapter (D -> rank -> D, no bias)",
    )
)
register(
    BlueprintSpec(
        "norm",
        ("conv1d", "conv2d", "linear", "sequence"),
        {"groups": 1},
        _norm_count,
        _norm_make,
        check=_check_groups,
        description="a residual normalization (GroupNorm for conv features, LayerNorm otherwise)",
    )
)
