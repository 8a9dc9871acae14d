"""Where a run trains: one torch device per run, named by a string and resolved when the trainer is built.

``auto`` (the default) is this process's CUDA device where CUDA is available
(under ``torchrun`` or ``esper train --nproc``, the one its ``LOCAL_RANK``
selected) and the CPU otherwise; ``cpu``, ``cuda`` (this process's current CUDA
device: in a parallel run, each rank's own) and ``cuda:N`` name one.
The device belongs to the machine a run trains on, not to the run: it is not
stored in the run's checkpoint, so a run checkpointed on a GPU resumes on a
CPU-only machine under ``auto`` (and the other way round). A process's default
comes from :data:`DEVICE_ENV` (how the Tolaria service is told), else ``auto``.
"""

from __future__ import annotations

import os

import torch

#: The environment variable a process's default device is read from (``auto`` when unset or empty).
DEVICE_ENV = "ESPER_DEVICE"
AUTO = "auto"
#: The device types a run may name (besides ``auto``).
DEVICE_TYPES = ("cpu", "cuda")


def check_device(value: object, field: str = "device") -> str:
    """``value`` if it names a device this module resolves (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else a
    ValueError naming ``field`` and the value. Whether the device exists here is :func:`resolve_device`'s check."""
    if not isinstance(value, str):
        raise ValueError(f"field {field!r}: must be a string such as 'auto', 'cpu' or 'cuda:0' (value {value!r})")
    if value == AUTO:
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES or (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"field {field!r}: must be 'auto', 'cpu', 'cuda' or 'cuda:N' (value {value!r})")
    return value


def resolve_device(value: str, field: str = "device") -> torch.device:
    """The torch device ``value`` names on this machine: ``auto`` picks CUDA when it is available. Naming a CUDA
    device this process cannot use is a ValueError naming ``field``, the value and what is available."""
    check_device(value, field)
    if value == AUTO:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(value)
    if device.type == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"field {field!r}: {value!r} but this machine has no CUDA device torch can use")
    if device.index is not None and device.index >= count:
        raise ValueError(f"field {field!r}: {value!r} but this machine has {count} CUDA device(s)")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def configured_device() -> str:
    """This process's default device: :data:`DEVICE_ENV` when set (checked), else ``auto``."""
    return check_device(os.environ.get(DEVICE_ENV) or AUTO, DEVICE_ENV)


__all__ = ["AUTO", "DEVICE_ENV", "DEVICE_TYPES", "check_device", "configured_device", "resolve_device"]
