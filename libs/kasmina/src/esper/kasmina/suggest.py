"""Where can seeds grow in a model? :func:`suggest_slots` lists every candidate position.

One no-grad forward pass on an example input (eval mode, restored afterwards)
records each submodule's output and the data flow between them. Every module
whose output is one tensor of a layout some blueprint serves is a candidate,
except the one that makes the model's output (a seed there would rewrite the
prediction itself). Each candidate carries its per-sample feature shape, its
layout (inferred along the data flow as :meth:`MorphogeneticModel.probe` does,
so the table says what the slot will be) and the catalogue options that fit,
priced exactly. Positions right after an activation are marked: there a
residual seed sees the features the next layer reads, which is where Esper's
own hosts put their slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esper.kasmina.blueprints.catalogue import CATALOGUE, Option, priced_options
from esper.kasmina.layout import DataFlow, within_sequence_model
from esper.kasmina.model import MorphogeneticModel

#: Modules after which a slot is marked as suggested (nonlinearities the next layer reads).
ACTIVATIONS = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Sigmoid,
    nn.Hardswish,
    nn.PReLU,
    nn.SELU,
    nn.Softplus,
)


@dataclass(frozen=True, slots=True)
class SlotSuggestion:
    """A module a slot could sit at, what its features look like there, and what would fit.

    ``options``: (blueprint, config, exact parameters added) in catalogue order.
    ``after_activation``: the module is a nonlinearity (a good place for a residual seed).
    """

    module: str
    op: str
    shape: tuple[int, ...]
    layout: str
    after_activation: bool
    options: tuple[tuple[str, dict[str, Any], int], ...]

    @property
    def blueprints(self) -> tuple[str, ...]:
        """Names of the blueprints that fit, in catalogue order."""
        return tuple(name for name, _, _ in self.options)


@torch.no_grad()
def suggest_slots(
    model: nn.Module, example_input: Any, *, catalogue: tuple[Option, ...] = CATALOGUE
) -> list[SlotSuggestion]:
    """Candidate slot positions of ``model`` in forward order (see the module docstring).

    ``example_input``: a batch ``(N, *input_shape)`` (N >= 1), or a tuple of the
    forward's positional arguments. ``model`` may be a plain module or a wrapped
    :class:`MorphogeneticModel` (its host is examined).
    """
    host = model.host if isinstance(model, MorphogeneticModel) else model
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    flow = DataFlow(host)
    outputs: dict[str, object] = {}
    order: list[str] = []
    handles = []

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if name not in outputs:
                outputs[name] = output
                order.append(name)

        return hook

    modes = {module: module.training for module in host.modules()}
    try:
        for name, module in host.named_modules():
            if name:
                handles.append(module.register_forward_hook(record(name)))
        host.eval()
        with flow.record():
            final = host(*args)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    suggestions = []
    for name in order:
        output = outputs[name]
        if not isinstance(output, torch.Tensor) or output.dim() < 2 or output is final:
            continue
        shape = tuple(int(s) for s in output.shape[1:])
        layout = flow.layout(name, shape, within_sequence_model(host, name))
        if layout is None:
            continue
        module = flow.modules[name]
        options = tuple(
            (option.blueprint, dict(option.config), params)
            for option, params in priced_options(shape, layout, catalogue)
        )
        if options:
            suggestions.append(
                SlotSuggestion(name, type(module).__name__, shape, layout, isinstance(module, ACTIVATIONS), options)
            )
    return suggestions


def suggested_slot_map(suggestions: list[SlotSuggestion]) -> dict[str, str]:
    """A slot map ``{"s1": module, ...}`` of the positions after an activation, in forward order."""
    chosen = [s.module for s in suggestions if s.after_activation]
    return {f"s{i}": module for i, module in enumerate(chosen, 1)}


def format_suggestions(suggestions: list[SlotSuggestion]) -> str:
    """The suggestions as a plain-text table (``esper slots`` prints it)."""
    rows = [("module", "op", "shape", "layout", "suggested", "blueprints (params added)")]
    for s in suggestions:
        fits = ", ".join(f"{name} {params:,}" for name, _, params in s.options)
        shape = "(" + ", ".join(str(d) for d in s.shape) + ("," if len(s.shape) == 1 else "") + ")"
        rows.append((s.module, s.op, shape, s.layout, "yes" if s.after_activation else "", fits))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
    if not suggestions:
        lines.append("(no module output fits a blueprint)")
    return "\n".join(line.rstrip() for line in lines)
