"""GradMax: a fresh seed's first layer chosen from data, its last layer still zero.

Every seed is residual, ``seed(h) = h + W2 f(W1 h)``, with ``W2 = 0`` so that it
starts as the identity and the host is undisturbed. But at ``W2 = 0`` the
first layer ``W1`` gets no gradient, and what ``W2`` first learns depends on
where the random ``W1`` happens to point. GradMax (Evci et al., ICLR 2022)
keeps ``W2 = 0`` and points the rows of ``W1`` along the directions that make
the gradient of ``W2`` largest: with ``g = dL/d(slot output)`` and ``p`` the
inputs each ``W1`` row reads, the linearized ``||dL/dW2||^2`` is
``tr(W1 S W1^T)`` with ``S = sum_j M_j^T M_j``, ``M_j = sum_{n,t} g(t) p(t + j)^T``
(``j`` over ``W2``'s taps; one tap for a linear layer), so the best unit-norm
rows are the top eigenvectors of ``S``. Each row keeps the norm its default
initialization drew; rows beyond the rank of ``S`` keep their random draw.

Which seeds it serves is read from their parameters' names and shapes, not
their module types, so an eager seed and a seed loaded from a compiled kernel
(:mod:`esper.kasmina.kernels`: a program whose parameters carry the eager
seed's state-dict names) get the same initialization. Served: exactly the
parameters ``body.0.weight``, ``body.2.weight`` (and their biases) of a
residual ``body`` whose first layer maps the features' width ``C`` to some
``W`` and whose last maps ``W`` back to ``C`` -- two linear layers (weights
``(W, C)``, ``(C, W)``: ``mlp``) or two ungrouped 1-D convolutions (weights
``(W, C, k1)``, ``(C, W, k2)``: ``conv_heavy``) with Kasmina's shape-keeping
convolution (stride 1, dilation 1, padding ``k // 2``). Where the layers are
real ``nn.Conv1d`` / ``nn.Linear`` modules their settings are checked too; a
compiled kernel was validated against that eager build, so its names and
shapes stand for them. For any other seed :func:`gradmax_` changes nothing and
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina.blueprints.modules import Residual

#: The first and last layer of a served seed, by state-dict prefix.
FIRST, LAST = "body.0", "body.2"
_SERVED = frozenset(f"{layer}.{p}" for layer in (FIRST, LAST) for p in ("weight", "bias"))


@dataclass(frozen=True, slots=True)
class GradMaxLayers:
    """What GradMax needs of a seed: its first layer's weight and, for convolutions, both layers' taps."""

    first: torch.Tensor
    conv: bool
    kernel_first: int = 1
    padding_first: int = 0
    kernel_last: int = 1
    padding_last: int = 0


def gradmax_layers(seed: nn.Module) -> GradMaxLayers | None:
    """The served layers of ``seed`` (see the module docstring), found by parameter names and shapes; else None."""
    if not isinstance(seed, Residual | torch.fx.GraphModule | torch.jit.ScriptModule):
        return None
    params = dict(seed.named_parameters())
    if not {f"{FIRST}.weight", f"{LAST}.weight"} <= params.keys() <= _SERVED:
        return None
    first, last = params[f"{FIRST}.weight"], params[f"{LAST}.weight"]
    if first.dim() != last.dim() or first.dim() not in (2, 3):
        return None
    if last.shape[0] != first.shape[1] or last.shape[1] != first.shape[0]:  # C -> W -> C, no groups
        return None
    modules = dict(seed.named_modules())
    body = modules.get("body")
    if isinstance(body, nn.Sequential) and len(body) != 3:  # an eager body with more than first, activation, last
        return None
    conv = first.dim() == 3
    k1, k2 = int(first.shape[-1]), int(last.shape[-1])
    if conv and (k1 % 2 == 0 or k2 % 2 == 0):
        return None
    for name in (FIRST, LAST):
        if not _plain(modules.get(name), conv):
            return None
    if not conv:
        return GradMaxLayers(first, conv=False)
    return GradMaxLayers(first, conv=True, kernel_first=k1, padding_first=k1 // 2, kernel_last=k2, padding_last=k2 // 2)


def _plain(module: nn.Module | None, conv: bool) -> bool:
    """Whether a layer is what its weight's shape says: the eager layer with Kasmina's settings, or compiled code."""
    if conv and type(module) is nn.Conv1d:
        k = module.kernel_size[0]
        return module.stride == (1,) and module.dilation == (1,) and module.groups == 1 and module.padding == (k // 2,)
    if not conv and type(module) is nn.Linear:
        return True
    # a compiled kernel's parameter holders: no forward of their own (the program computes)
    return type(module) is nn.Module or isinstance(module, torch.jit.ScriptModule)


@torch.no_grad()
def gradmax_directions(h: torch.Tensor, g: torch.Tensor, layers: GradMaxLayers) -> torch.Tensor:
    """Unit directions for the first layer's rows, best first: (min(rows, inputs), inputs per row).

    ``h``: the features the seed reads, ``g``: the loss gradient at the slot's
    output; both (N, C, L) for convolutions, (N, ..., D) for linear layers.
    """
    if not layers.conv:
        hh = h.reshape(-1, h.shape[-1]).double()
        gg = g.reshape(-1, g.shape[-1]).double()
        m = gg.T @ hh  # (D_out, D_in)
        scatter = m.T @ m
    else:
        k1, k2 = layers.kernel_first, layers.kernel_last
        p1, p2 = layers.padding_first, layers.padding_last
        length = h.shape[2]
        patches = F.pad(h, (p1, p1)).unfold(2, k1, 1)[:, :, :length]  # (N, C, L, k1)
        patches = patches.permute(0, 2, 1, 3).reshape(h.shape[0], length, -1).double()  # (N, L, C*k1)
        gd = g.double()
        scatter = torch.zeros(patches.shape[2], patches.shape[2], dtype=torch.float64, device=patches.device)
        for tap in range(k2):  # last's output at t reads first's output at t + tap - p2
            shift = tap - p2
            lo, hi = max(0, -shift), min(length, length - shift)
            if hi <= lo:
                continue
            m = torch.einsum("nct,ntd->cd", gd[:, :, lo:hi], patches[:, lo + shift : hi + shift])
            scatter += m.T @ m
    eigenvalues, vectors = torch.linalg.eigh(scatter)
    keep = eigenvalues.flip(0) > eigenvalues.max().clamp_min(1e-30) * 1e-9  # directions S actually has
    return vectors.flip(1).T[keep].to(h.dtype)


@torch.no_grad()
def gradmax_(seed: nn.Module, h: torch.Tensor, g: torch.Tensor) -> bool:
    """Point ``seed``'s first-layer rows along the GradMax directions of ``h``, ``g`` (in place).

    Returns False (and leaves ``seed`` as it was) for a seed this rule does not
    serve; the last layer is not touched, so the seed stays the identity.
    """
    layers = gradmax_layers(seed)
    if layers is None:
        return False
    directions = gradmax_directions(h, g, layers)
    first = layers.first
    weight = first.reshape(first.shape[0], -1).clone()
    rows = min(weight.shape[0], directions.shape[0])
    norms = weight[:rows].norm(dim=1, keepdim=True)
    weight[:rows] = directions[:rows] * norms
    first.copy_(weight.reshape(first.shape))
    return True
