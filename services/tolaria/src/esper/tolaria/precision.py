"""The arithmetic of a run's forward passes: float32 throughout, or bfloat16 autocast.

``bf16`` runs every forward pass that trains or scores the run (the training
step, the isolated seeds' extra pass, the validation and test passes, the
counterfactual seed measurements, a cull's validation loss and the task's own
metrics) under :func:`torch.autocast` with
``torch.bfloat16``: matrix products and convolutions run in bfloat16, while
reductions, softmax and the loss stay in float32, as do the weights, their
gradients and the optimizers' state. bfloat16 has float32's exponent range, so
no loss scaling is needed and the governor judges the same loss it always does.
The backward passes run outside autocast, as PyTorch advises. A GERMINATED
seed's GradMax initialization stays float32 (it reads the gradient's
directions, which bfloat16 would round). Layer health reads the validation
pass's activations where it can (bfloat16 then; its statistics are float32),
else its own float32 pass.

On CUDA, bfloat16 needs a GPU that has it (Ampere or newer; refused otherwise,
naming the device). On the CPU, autocast to bfloat16 always works but can only
pay where the CPU has bfloat16 instructions (AVX512-BF16, AMX) and the model is
wide enough for matrix products to dominate; ``benchmarks/precision.py``
measures it side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch

from esper.leyline import PRECISIONS

#: A context manager factory: enter what it returns around a forward pass (and its loss).
Autocast = Callable[[], AbstractContextManager[object]]


def check_precision(value: object, field: str = "precision") -> str:
    """``value`` if it names a precision (``fp32``, ``bf16``), else a ValueError naming ``field`` and the value."""
    if value not in PRECISIONS:
        raise ValueError(f"field {field!r}: must be one of {', '.join(PRECISIONS)} (value {value!r})")
    return str(value)


def autocast_for(precision: str, device: torch.device, field: str = "precision") -> Autocast:
    """What a run with ``precision`` on ``device`` enters around its forward passes. ValueError naming ``field``
    when ``device`` cannot run that precision."""
    check_precision(precision, field)
    if precision == "fp32":
        return nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"field {field!r}: {precision!r} but {device} ({name}) has no bfloat16 arithmetic")
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


__all__ = ["PRECISIONS", "Autocast", "autocast_for", "check_precision"]
