"""Blueprint, kernel and compilation messages (Tezzeret and Urza)."""

from __future__ import annotations

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
    message_type = "compile_request"

    request_id: str
    blueprint_id: str
    input_shape: list[int]
    config: BlueprintConfig = msgspec.field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"


class CompileStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class KernelMetadata(Message, frozen=True, kw_only=True):
    """A compiled, validated kernel artifact stored in Urza, addressed by its sha256.

    ``max_abs_error`` is the largest difference from eager numerics.
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


class CompileResult(Message, frozen=True, kw_only=True):
    message_type = "compile_result"

    request_id: str
    status: CompileStatus
    kernel: KernelMetadata | None = None
    error: str | None = None
