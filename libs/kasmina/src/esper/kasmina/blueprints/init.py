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

Seeds of the shape ``Residual(Sequential(first, activation, last))`` with
``Conv1d`` or ``Linear`` layers are served (``conv_heavy``, ``mlp``); for any
other seed :func:`gradmax_` changes nothing and says so.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina.blueprints.modules import Residual


def _layers(seed: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(first, last)`` of a ``Residual(Sequential(first, activation, last))`` seed, else None."""
    body = seed.body if isinstance(seed, Residual) else None
    if not isinstance(body, nn.Sequential) or len(body) != 3:
        return None
    first, last = body[0], body[2]
    if isinstance(first, nn.Conv1d) and isinstance(last, nn.Conv1d):
        same = all(m.stride == (1,) and m.groups == 1 and m.dilation == (1,) for m in (first, last))
        return (first, last) if same else None
    if isinstance(first, nn.Linear) and isinstance(last, nn.Linear):
        return first, last
    return None


@torch.no_grad()
def gradmax_directions(h: torch.Tensor, g: torch.Tensor, first: nn.Module, last: nn.Module) -> torch.Tensor:
    """Unit directions for ``first``'s rows, best first: (min(rows, inputs), inputs per row).

    ``h``: the features the seed reads, ``g``: the loss gradient at the slot's
    output; both (N, C, L) for convolutions, (N, ..., D) for linear layers.
    """
    if isinstance(first, nn.Linear):
        hh = h.reshape(-1, h.shape[-1]).double()
        gg = g.reshape(-1, g.shape[-1]).double()
        m = gg.T @ hh  # (D_out, D_in)
        scatter = m.T @ m
    else:
        k1, k2 = first.kernel_size[0], last.kernel_size[0]
        p1, p2 = first.padding[0], last.padding[0]
        length = h.shape[2]
        patches = F.pad(h, (p1, p1)).unfold(2, k1, 1)[:, :, :length]  # (N, C, L, k1)
        patches = patches.permute(0, 2, 1, 3).reshape(h.shape[0], length, -1).double()  # (N, L, C*k1)
        gd = g.double()
        scatter = torch.zeros(patches.shape[2], patches.shape[2], dtype=torch.float64)
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
    layers = _layers(seed)
    if layers is None:
        return False
    first, last = layers
    directions = gradmax_directions(h, g, first, last)
    weight = first.weight.reshape(first.weight.shape[0], -1)
    rows = min(weight.shape[0], directions.shape[0])
    norms = weight[:rows].norm(dim=1, keepdim=True)
    weight[:rows] = directions[:rows] * norms
    first.weight.copy_(weight.reshape(first.weight.shape))
    return True
