"""Request and response bodies of Urza's HTTP API (the OpenAPI schema is the contract)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from esper.leyline.graph import LAYOUTS

#: Text without NUL characters (PostgreSQL cannot store them; no name or description needs one).
NO_NUL = r"^[^\x00]*$"
BlueprintName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="blueprint id")]
ConfigValue = bool | int | float | Annotated[str, Field(max_length=256, pattern=NO_NUL)]
Config = Annotated[dict[Annotated[str, Field(max_length=64, pattern=NO_NUL)], ConfigValue], Field(max_length=64)]
Shape = Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)]], Field(min_length=1, max_length=4)]
Layout = Annotated[str, Field(pattern="^(" + "|".join(LAYOUTS) + ")$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Dtype = Annotated[str, Field(pattern="^(float32|float64|float16|bfloat16)$")]
Target = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_:]{0,63}$", description="device, e.g. cpu or cuda")]


class Reason(BaseModel):
    reason: str


class BlueprintIn(BaseModel):
    """A new blueprint or a new version of one (``version`` omitted: the next one)."""

    model_config = ConfigDict(extra="forbid")

    blueprint_id: BlueprintName
    version: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    family: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
    description: Annotated[str, Field(max_length=4096, pattern=NO_NUL)] = ""
    layer_kinds: Annotated[list[Layout], Field(min_length=1, max_length=4)]
    default_config: Config = Field(default_factory=dict)


class BlueprintOut(BaseModel):
    blueprint_id: str
    version: int
    family: str
    description: str
    layer_kinds: list[str]
    default_config: dict[str, ConfigValue]
    config_schema: dict[str, object]
    builtin: bool
    created_at: datetime


class BlueprintPage(BaseModel):
    items: list[BlueprintOut]
    total: int
    limit: int
    offset: int


class KernelStatus(StrEnum):
    REQUESTED = "requested"
    COMPILING = "compiling"
    VALIDATED = "validated"
    FAILED = "failed"


class KernelIn(BaseModel):
    """Register (or find) the kernel for one blueprint version, config, shape, layout, dtype and target."""

    model_config = ConfigDict(extra="forbid")

    blueprint_id: BlueprintName
    blueprint_version: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    config: Config = Field(default_factory=dict)
    input_shape: Shape
    layout: Layout | None = None
    dtype: Dtype = "float32"
    target: Target = "cpu"


class KernelUpdate(BaseModel):
    """A compiler's report on a kernel. ``validated`` needs ``sha256`` of an uploaded blob; ``failed`` an error."""

    model_config = ConfigDict(extra="forbid")

    status: KernelStatus
    error: Annotated[str, Field(max_length=16_384, pattern=NO_NUL)] | None = None
    sha256: Sha256 | None = None
    artifact_format: Annotated[str, Field(max_length=32, pattern=NO_NUL)] | None = None
    latency_us: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    backward_latency_us: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    params: Annotated[int, Field(ge=0, le=1 << 62)] | None = None
    memory_bytes: Annotated[int, Field(ge=0, le=1 << 62)] | None = None
    max_abs_error: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_grad_error: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class KernelOut(BaseModel):
    kernel_id: str
    blueprint_id: str
    blueprint_version: int
    config: dict[str, ConfigValue]
    input_shape: list[int]
    layout: str | None
    dtype: str
    target: str
    status: KernelStatus
    error: str | None
    latency_us: float | None
    backward_latency_us: float | None
    params: int | None
    memory_bytes: int | None
    max_abs_error: float | None
    max_grad_error: float | None
    artifact_format: str | None
    sha256: str | None
    size_bytes: int | None
    created_at: datetime
    updated_at: datetime


class KernelPage(BaseModel):
    items: list[KernelOut]
    total: int
    limit: int
    offset: int


class BlobOut(BaseModel):
    sha256: str
    size_bytes: int
