"""``esper slots package.module:function``: where seeds can grow in your model, as a table.

The function returns one of: a :class:`~esper.tolaria.tasks.Task` (its host and
two training inputs are used), a ``(model, example_input)`` pair, or a bare
``nn.Module`` (then ``--input-shape`` gives the per-sample input shape). The
current folder is importable, as it is for ``python -m``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def importable_cwd() -> None:
    """Let ``module:function`` references name modules in the current folder (as ``python -m`` does)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _shape(value: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in value.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be sizes like 8,8 or 3x32x32 (value {value!r})") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"must be positive sizes (value {value!r})")
    return shape


def add_parser(sub: Any) -> None:
    slots = sub.add_parser("slots", help="list where seeds can grow in your model (layouts, fitting blueprints)")
    slots.add_argument("reference", help="package.module:function returning a Task, (model, input) or a model")
    slots.add_argument("--input-shape", type=_shape, default=None, help="per-sample input shape, e.g. 8,8")
    slots.add_argument("--json", action="store_true", help="print the suggestions as JSON")


def model_and_input(reference: str, input_shape: tuple[int, ...] | None) -> tuple[Any, Any]:
    """The model and an example batch the reference gives (see the module docstring)."""
    import torch
    from torch import nn

    from esper.tolaria.tasks import Task
    from esper.tolaria.usertask import load_object

    importable_cwd()
    factory = load_object(reference, "reference")
    made = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if isinstance(made, Task):
        return made.build_host(), made.train.x[:2]
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return made
    if isinstance(made, nn.Module):
        if input_shape is None:
            raise ValueError(f"field 'input_shape': {reference!r} gives a bare model; pass --input-shape")
        return made, torch.randn(2, *input_shape)
    raise ValueError(f"field 'reference': {reference!r} gave {type(made).__name__}, not a Task, model or pair")


def slots(args: argparse.Namespace) -> int:
    from esper.kasmina.suggest import format_suggestions, suggest_slots, suggested_slot_map

    model, example = model_and_input(args.reference, args.input_shape)
    found = suggest_slots(model, example)
    if args.json:
        print(json.dumps([_row(s) for s in found], indent=2))
        return 0
    print(format_suggestions(found))
    print(f"\nslot map (after each activation): {suggested_slot_map(found)}")
    return 0


def _row(s: Any) -> dict[str, Any]:
    return {
        "module": s.module,
        "op": s.op,
        "shape": list(s.shape),
        "layout": s.layout,
        "suggested": s.after_activation,
        "options": [{"blueprint": b, "config": c, "params": p} for b, c, p in s.options],
    }
