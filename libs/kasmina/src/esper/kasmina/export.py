"""Export: a MorphogeneticModel as a plain ``nn.Module`` that no longer needs Esper.

Fossilized seeds are merged into the host (the hooked submodule becomes
``nn.Sequential(original, seed)``), blending seeds are merged at their current
alpha, and slots whose value is the host's (dormant, germinated, training,
culled, ...) disappear. Seeds are traced into ``torch.fx.GraphModule`` so no
Esper class is left inside; a host whose own class comes from Esper is traced
too. The result runs, pickles and loads where Esper is not installed, and
``torch.export.export`` accepts it.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.slot import BLENDED_STAGES, SeedSlot
from esper.leyline import SeedStage


class _Blend(nn.Module):
    """``alpha * seed(h) + (1 - alpha) * h`` with alpha frozen (traced away at export)."""

    def __init__(self, seed: nn.Module, alpha: float) -> None:
        super().__init__()
        self.seed = seed
        self.alpha = float(alpha)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.seed(h) + (1.0 - self.alpha) * h


def _from_esper(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "esper"


def _trace(module: nn.Module, what: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:
        raise ValueError(f"export: cannot trace {what} ({type(module).__name__}) into a plain graph: {exc}") from exc


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def export(model: MorphogeneticModel) -> nn.Module:
    """A plain copy of ``model``: fossilized (and blending) seeds merged in, every other slot removed.

    The copy keeps the host's input and output signature and its train/eval mode
    and gives the same outputs as ``model``. ``model`` itself is not changed.
    """
    if not isinstance(model, MorphogeneticModel):
        raise TypeError(f"export needs a MorphogeneticModel, got {type(model).__name__}")
    clone = copy.deepcopy(model)
    host = clone.host
    merges: list[tuple[str, nn.Module]] = []
    for slot in clone.slots.values():
        assert isinstance(slot, SeedSlot)
        slot.remove_hook()
        if slot.seed is None:
            continue
        if slot.stage is SeedStage.FOSSILIZED:
            branch = slot.seed
        elif slot.stage in BLENDED_STAGES:
            branch = _Blend(slot.seed, slot.alpha)
        else:
            continue  # germinated or training: the slot's value is the host's
        seed = _trace(branch, f"the seed of slot {slot.slot_id!r}")
        merges.append((slot.module_name, nn.Sequential(slot.target, seed)))
    for module_name, merged in merges:
        _replace(host, module_name, merged)
    if any(_from_esper(m) for m in host.modules() if not isinstance(m, fx.GraphModule)):
        traced = _trace(host, "the host")
        traced.train(host.training)
        return traced
    return host
