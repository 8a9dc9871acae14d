"""Export: a MorphogeneticModel as a plain ``nn.Module`` that no longer needs Esper.

Fossilized seeds are merged into the host (the hooked submodule becomes
``nn.Sequential(original, seed)``), blending seeds are merged at their current
alpha, a joint seed in TRAINING (in the forward at full weight) as a fossilized
one, and slots whose value is the host's (dormant, germinated, an isolated seed
in training, culled, ...) disappear. Seeds are traced into ``torch.fx.GraphModule`` so no
Esper class is left inside; a host whose own class comes from Esper is traced
too. The result runs, pickles and loads where Esper is not installed, and
``torch.export.export`` accepts it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.leyline import BLENDED_STAGES


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
        traced = fx.symbolic_trace(module)
    except Exception as exc:
        raise ValueError(f"export: cannot trace {what} ({type(module).__name__}) into a plain graph: {exc}") from exc
    # Annotations written under `from __future__ import annotations` are strings, which fx would
    # emit as globals that cannot be pickled; the graph needs no annotations to run.
    for node in traced.graph.nodes:
        node.type = None
    traced.recompile()
    return traced


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def export(
    model: MorphogeneticModel, *, example_inputs: tuple[Any, ...] | None = None, atol: float = 1e-5
) -> nn.Module:
    """A plain copy of ``model``: fossilized (and blending) seeds merged in, every other slot removed.

    The copy keeps the host's input and output signature and its train/eval mode
    and gives the same outputs as ``model``; ``model`` itself is not changed.
    With ``example_inputs`` the copy is checked against ``model`` on them (within
    ``atol``) and ValueError raised if it differs: a host whose forward reads
    attributes of a slotted submodule, or takes a fused fast path around it
    (``nn.TransformerEncoderLayer`` in eval mode), cannot be merged this way.
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
        if slot.stage in BLENDED_STAGES:
            branch = _Blend(slot.seed, slot.alpha)
        elif slot.in_forward:  # fossilized, or a joint seed in TRAINING: at full weight
            branch = slot.seed
        else:
            continue  # germinated, or training isolated: the slot's value is the host's
        seed = _trace(branch, f"the seed of slot {slot.slot_id!r}")
        merges.append((slot.module_name, nn.Sequential(slot.target, seed)))
    for module_name, merged in merges:
        _replace(host, module_name, merged)
    result: nn.Module = host
    if any(_from_esper(m) for m in host.modules() if not isinstance(m, fx.GraphModule)):
        result = _trace(host, "the host")
        result.train(host.training)
    if example_inputs is not None:
        _verify(model, result, example_inputs, atol)
    return result


def _verify(model: MorphogeneticModel, exported: nn.Module, example_inputs: tuple[Any, ...], atol: float) -> None:
    expected, got = model(*example_inputs), exported(*example_inputs)
    if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise ValueError(f"export: can only check tensor outputs, got {type(expected).__name__}")
    if expected.shape != got.shape or not torch.allclose(expected.float(), got.float(), atol=atol, rtol=0.0):
        diff = (expected.float() - got.float()).abs().max().item() if expected.shape == got.shape else "shape"
        raise ValueError(f"export: the exported module differs from the model on example_inputs (max |diff| {diff})")
