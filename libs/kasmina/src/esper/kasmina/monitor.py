"""GradientIsolationMonitor: measures host and seed gradients and catches isolation leaks.

Isolation means a TRAINING (or GERMINATED) seed reads host features that carry
no gradient back to the host. The monitor checks that directly: it watches the
tensor each isolated seed reads, and counts a violation whenever a non-zero
gradient flows back through it.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.leyline import ACTIVE_STAGES


class GradientIsolationMonitor:
    """Context manager over a MorphogeneticModel; every hook it adds is removed on exit.

    After (or during) the ``with`` block:

    - ``host_grad_norm`` / ``seed_grad_norm``: mean over backward passes of the
      L2 norm of the gradients that reached host parameters (fossilized seeds
      included) / live seed parameters in that pass;
    - ``seed_grad_norms``: the same per slot;
    - ``violations``: times a non-zero gradient flowed from an isolated seed back
      into the host features it read (one per seed forward whose input leaked);
    - ``passes``: backward passes seen.

    Seeds germinated inside the block are not watched: open the monitor after germinating.
    """

    def __init__(self, model: MorphogeneticModel) -> None:
        if not isinstance(model, MorphogeneticModel):
            raise TypeError(f"GradientIsolationMonitor needs a MorphogeneticModel, got {type(model).__name__}")
        self.model = model
        self.violations = 0
        self.passes = 0
        self._host_norms: list[float] = []
        self._seed_norms: dict[str, list[float]] = {}
        self._handles: list[RemovableHandle] = []
        self._host_sq = 0.0
        self._seed_sq: dict[str, float] = {}
        self._pass_open = False

    # ----------------------------------------------------------------- results
    @property
    def host_grad_norm(self) -> float:
        return sum(self._host_norms) / len(self._host_norms) if self._host_norms else 0.0

    @property
    def seed_grad_norms(self) -> dict[str, float]:
        return {sid: sum(v) / len(v) for sid, v in self._seed_norms.items() if v}

    @property
    def seed_grad_norm(self) -> float:
        """Mean per-pass norm over all live seeds together."""
        per_pass = [
            math.sqrt(sum(norms[i] ** 2 for norms in self._seed_norms.values())) for i in range(len(self._host_norms))
        ]
        return sum(per_pass) / len(per_pass) if per_pass else 0.0

    # ----------------------------------------------------------------- hooks
    def __enter__(self) -> GradientIsolationMonitor:
        for param in self.model.host_parameters():
            if param.requires_grad:
                self._handles.append(param.register_hook(self._on_host_grad))
        for slot in self.model.slots.values():
            assert isinstance(slot, SeedSlot)
            if slot.stage not in ACTIVE_STAGES or slot.seed is None:
                continue
            self._seed_sq[slot.slot_id] = 0.0
            self._seed_norms[slot.slot_id] = []
            for param in slot.seed.parameters():
                if param.requires_grad:
                    self._handles.append(param.register_hook(self._seed_grad_hook(slot.slot_id)))
            self._handles.append(slot.seed.register_forward_pre_hook(self._seed_input_hook(slot)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _open_pass(self) -> None:
        # One callback per backward pass closes it, so norms are per pass, not summed over the block.
        if not self._pass_open:
            self._pass_open = True
            torch.autograd.Variable._execution_engine.queue_callback(self._close_pass)

    def _close_pass(self) -> None:
        self._pass_open = False
        self.passes += 1
        self._host_norms.append(math.sqrt(self._host_sq))
        for sid in self._seed_sq:
            self._seed_norms[sid].append(math.sqrt(self._seed_sq[sid]))
            self._seed_sq[sid] = 0.0
        self._host_sq = 0.0

    def _on_host_grad(self, grad: torch.Tensor) -> None:
        self._open_pass()
        self._host_sq += float(grad.detach().float().pow(2).sum())

    def _seed_grad_hook(self, slot_id: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self._open_pass()
            self._seed_sq[slot_id] += float(grad.detach().float().pow(2).sum())

        return hook

    def _seed_input_hook(self, slot: SeedSlot) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not slot.isolated or slot._override is not None:
                return None
            seed_input = args[0] if args else None
            if isinstance(seed_input, torch.Tensor) and seed_input.requires_grad:
                # A private alias, so the hook sees only the gradient coming back through the seed.
                alias = seed_input.view_as(seed_input)
                alias.register_hook(self._on_leak)
                return (alias, *args[1:])
            return None

        return pre_hook

    def _on_leak(self, grad: torch.Tensor) -> None:
        self._open_pass()
        if bool(grad.detach().abs().sum() > 0):
            self.violations += 1
