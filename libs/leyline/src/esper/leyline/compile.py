"""Blueprint, kernel and compilation messages (Tezzeret and Urza), and the kernel identity.

A kernel is one blueprint compiled for one (blueprint version, resolved config,
per-sample input shape, feature layout, dtype, target device). Its id is a hash
of exactly those, computed by :func:`kernel_id_for`, so Tamiyo, Tezzeret, Urza
and Kasmina name the same kernel the same way without asking each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated

import msgspec

from esper.leyline.commands import BlueprintConfig
from esper.leyline.message import Message

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class BlueprintMetadata(Message, frozen=True, kw_only=True):
    """What a blueprint is and where it fits (``layer_kinds``: conv1d, conv2d, linear, ...)."""

    message_type = "blueprint_metadata"

    blueprint_id: str
    description: str = ""
    layer_kinds: list[str] = msgspec.field(default_factory=list)
    default_config: BlueprintConfig = msgspec.field(default_factory=dict)


class CompileRequest(Message, frozen=True, kw_only=True):
    """Ask Tezzeret for a kernel (stream ``esper.compile.requests``).

    ``input_shape`` is per sample (the batch dimension stays dynamic in the
    artifact); ``layout`` picks the feature layout where a shape fits two
    (``(T, D)`` is sequence or conv1d); None lets the blueprint choose.
    """

    message_type = "compile_request"

    request_id: str
    blueprint_id: str
    input_shape: list[int]
    config: BlueprintConfig = msgspec.field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    blueprint_version: Annotated[int, msgspec.Meta(ge=1)] = 1
    layout: str | None = None


class CompileStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class KernelMetadata(Message, frozen=True, kw_only=True):
    """A compiled, validated kernel artifact stored in Urza, addressed by its sha256.

    ``max_abs_error`` is the largest difference from eager outputs,
    ``max_grad_error`` from eager gradients (input and parameters);
    ``latency_us`` is the forward and ``backward_latency_us`` the backward time
    of one batch of ``benchmark_batch`` samples on the target device.
    """

    message_type = "kernel_metadata"

    kernel_id: str
    blueprint_id: str
    input_shape: list[int]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: NonNegInt
    params: NonNegInt
    config: BlueprintConfig = msgspec.field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    latency_us: float | None = None
    memory_bytes: int | None = None
    max_abs_error: float | None = None
    blueprint_version: Annotated[int, msgspec.Meta(ge=1)] = 1
    layout: str | None = None
    artifact_format: str = ""
    backward_latency_us: float | None = None
    max_grad_error: float | None = None
    benchmark_batch: NonNegInt = 0


class CompileResult(Message, frozen=True, kw_only=True):
    """Tezzeret's answer (stream ``esper.compile.results``); ``kernel_id`` names the kernel even on failure."""

    message_type = "compile_result"

    request_id: str
    status: CompileStatus
    kernel: KernelMetadata | None = None
    error: str | None = None
    kernel_id: str | None = None


class KernelFailure(StrEnum):
    """Why a germination could not use its compiled kernel and built the blueprint eagerly instead.

    The ``failure`` attribute of the ``EventKind.KERNEL_FALLBACK`` telemetry event.
    """

    URZA_UNAVAILABLE = "urza_unavailable"
    NOT_FOUND = "not_found"
    NOT_VALIDATED = "not_validated"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    CORRUPT_ARTIFACT = "corrupt_artifact"
    SHAPE_MISMATCH = "shape_mismatch"


def kernel_id_for(
    blueprint_id: str,
    input_shape: Sequence[int],
    config: Mapping[str, int | float | str | bool],
    *,
    blueprint_version: int = 1,
    layout: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> str:
    """The kernel id: ``k`` and 40 hex digits of a sha256 over the kernel's identity.

    ``config`` must be the *resolved* config (every key, defaults included), so
    that ``{}`` and the spelled-out defaults name one kernel. Floats and ints
    are kept apart (``2`` and ``2.0`` are different configs only if the blueprint
    says so; callers resolve through the blueprint first).
    """
    identity = {
        "blueprint": blueprint_id,
        "version": int(blueprint_version),
        "config": {str(k): config[k] for k in sorted(config)},
        "shape": [int(s) for s in input_shape],
        "layout": layout,
        "dtype": dtype,
        "device": device,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "k" + hashlib.sha256(canonical.encode()).hexdigest()[:40]
