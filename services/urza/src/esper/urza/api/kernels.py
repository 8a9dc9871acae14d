"""``/kernels``: register (idempotent), search by blueprint and shape, get, report compilation, fetch the artifact.

A kernel's id is :func:`esper.leyline.compile.kernel_id_for` over the resolved
config, so registering the same kernel twice (``{}`` or the spelled-out
defaults alike) finds the one row: two Tezzerets, or Tamiyo asking ahead of
need, never create two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from esper.leyline.compile import kernel_id_for
from esper.urza.api.auth import AUTH_RESPONSES, ApiError
from esper.urza.api.blobs import serve_blob
from esper.urza.api.blueprints import latest
from esper.urza.api.models import (
    NO_NUL,
    Dtype,
    KernelIn,
    KernelOut,
    KernelPage,
    KernelStatus,
    KernelUpdate,
    Layout,
    Reason,
)
from esper.urza.blobs import BlobNotFound, BlobStore
from esper.urza.catalogue import resolve_config
from esper.urza.db import BlueprintRow, KernelRow
from esper.urza.metrics import UrzaMetrics

#: layout -> rank of its per-sample shape (as Kasmina's ``LAYER_KIND_RANK``; Urza cannot import torch code).
LAYOUT_RANK = {"linear": 1, "conv1d": 2, "sequence": 2, "conv2d": 3}
KERNEL_ID = r"^k[0-9a-f]{40}$"
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Reason, "description": "unknown kernel"}}


def shape_key(shape: list[int]) -> str:
    return "x".join(str(s) for s in shape)


def to_out(row: KernelRow) -> KernelOut:
    return KernelOut.model_validate(row, from_attributes=True)


def _unprocessable(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}")


def resolve_kernel(session: Session, body: KernelIn) -> tuple[BlueprintRow, dict[str, Any], str]:
    """The blueprint row, resolved config and layout of a kernel request; 422 naming the field otherwise."""
    if body.blueprint_version is None:
        blueprint = latest(session, body.blueprint_id)
    else:
        blueprint = session.scalars(
            select(BlueprintRow).where(
                BlueprintRow.blueprint_id == body.blueprint_id, BlueprintRow.version == body.blueprint_version
            )
        ).first()
    if blueprint is None:
        version = "" if body.blueprint_version is None else f" version {body.blueprint_version}"
        raise _unprocessable("blueprint_id", f"unknown blueprint {body.blueprint_id!r}{version}")
    try:
        config = resolve_config(blueprint, body.config)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None  # the message names config.<key>
    rank = len(body.input_shape)
    if body.layout is None:
        layout = next((k for k in blueprint.layer_kinds if LAYOUT_RANK.get(k) == rank), None)
        if layout is None:
            raise _unprocessable(
                "input_shape", f"{body.input_shape} (rank {rank}) fits none of {blueprint.layer_kinds}"
            )
    else:
        layout = body.layout
        if layout not in blueprint.layer_kinds:
            raise _unprocessable("layout", f"{layout!r} is not served by {blueprint.blueprint_id!r}")
        if LAYOUT_RANK[layout] != rank:
            raise _unprocessable(
                "input_shape", f"{body.input_shape} has rank {rank}, {layout} needs {LAYOUT_RANK[layout]}"
            )
    return blueprint, config, layout


#: What a report may say about a kernel besides its status (all optional).
MEASUREMENTS = (
    "artifact_format",
    "latency_us",
    "backward_latency_us",
    "params",
    "memory_bytes",
    "max_abs_error",
    "max_grad_error",
)


def _record(row: KernelRow, body: KernelUpdate, *, only_missing: bool = False) -> bool:
    """Copy the report's measurements onto ``row`` (with ``only_missing``, only where none is recorded yet)."""
    changed = False
    for name in MEASUREMENTS:
        value = getattr(body, name)
        if value is not None and not (only_missing and getattr(row, name) is not None):
            setattr(row, name, value)
            changed = True
    return changed


def kernel_router(
    sessions: sessionmaker[Session], blobs: BlobStore, write: Callable[..., None], metrics: UrzaMetrics
) -> APIRouter:
    router = APIRouter(prefix="/kernels", tags=["kernels"])

    @router.post(
        "",
        response_model=KernelOut,
        status_code=201,
        dependencies=[Depends(write)],
        responses={**AUTH_RESPONSES, 200: {"model": KernelOut, "description": "already registered"}},
        summary="Register a kernel (status requested), or return the one already registered",
    )
    def register(body: KernelIn) -> Response:
        with sessions() as session:
            blueprint, config, layout = resolve_kernel(session, body)
            kernel_id = kernel_id_for(
                blueprint.blueprint_id,
                body.input_shape,
                config,
                blueprint_version=blueprint.version,
                layout=layout,
                dtype=body.dtype,
                device=body.target,
            )
            row = session.get(KernelRow, kernel_id)
            if row is not None:
                return JSONResponse(to_out(row).model_dump(mode="json"), status_code=200)
            row = KernelRow(
                kernel_id=kernel_id,
                blueprint_id=blueprint.blueprint_id,
                blueprint_version=blueprint.version,
                config=config,
                input_shape=list(body.input_shape),
                shape_key=shape_key(body.input_shape),
                layout=layout,
                dtype=body.dtype,
                target=body.target,
                status=KernelStatus.REQUESTED.value,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # registered concurrently: that row is the kernel
                session.rollback()
                row = session.get(KernelRow, kernel_id)
                assert row is not None
                return JSONResponse(to_out(row).model_dump(mode="json"), status_code=200)
            metrics.kernels_registered.inc()
            return JSONResponse(to_out(row).model_dump(mode="json"), status_code=201)

    @router.get("", response_model=KernelPage, summary="Search kernels by blueprint, shape, layout, status")
    def search(
        blueprint_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        input_shape: Annotated[str | None, Query(pattern=r"^[1-9][0-9]{0,6}(x[1-9][0-9]{0,6}){0,3}$")] = None,
        layout: Layout | None = None,
        status: KernelStatus | None = None,
        dtype: Dtype | None = None,
        target: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1 << 31)] = 0,
    ) -> KernelPage:
        where = []
        if blueprint_id is not None:
            where.append(KernelRow.blueprint_id == blueprint_id)
        if input_shape is not None:
            where.append(KernelRow.shape_key == input_shape)
        if layout is not None:
            where.append(KernelRow.layout == layout)
        if status is not None:
            where.append(KernelRow.status == status.value)
        if dtype is not None:
            where.append(KernelRow.dtype == dtype)
        if target is not None:
            where.append(KernelRow.target == target)
        with sessions() as session:
            total = session.scalar(select(func.count()).select_from(KernelRow).where(*where)) or 0
            rows = session.scalars(
                select(KernelRow)
                .where(*where)
                .order_by(KernelRow.created_at, KernelRow.kernel_id)
                .limit(limit)
                .offset(offset)
            ).all()
            return KernelPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @router.get("/{kernel_id}", response_model=KernelOut, responses=NOT_FOUND, summary="One kernel")
    def get(kernel_id: Annotated[str, Path(pattern=KERNEL_ID)]) -> KernelOut:
        with sessions() as session:
            row = session.get(KernelRow, kernel_id)
            if row is None:
                raise ApiError(404, f"unknown kernel {kernel_id!r}")
            return to_out(row)

    @router.patch(
        "/{kernel_id}",
        response_model=KernelOut,
        dependencies=[Depends(write)],
        responses={**AUTH_RESPONSES, **NOT_FOUND, 409: {"model": Reason, "description": "kernel already validated"}},
        summary="Report compilation: compiling, validated (with its artifact and measurements) or failed (with why)",
    )
    def update(kernel_id: Annotated[str, Path(pattern=KERNEL_ID)], body: KernelUpdate) -> KernelOut:
        with sessions() as session:
            row = session.get(KernelRow, kernel_id, with_for_update=True)
            if row is None:
                raise ApiError(404, f"unknown kernel {kernel_id!r}")
            if row.status == KernelStatus.VALIDATED.value:
                if body.status is KernelStatus.VALIDATED and body.sha256 == row.sha256:
                    # The same artifact again: a redelivered request, or the measurements Tezzeret adds after
                    # validating. Measurements not yet recorded are added; nothing recorded ever changes.
                    if _record(row, body, only_missing=True):
                        session.commit()
                    return to_out(row)
                raise ApiError(409, f"kernel {kernel_id} is validated (artifact {row.sha256}); it does not change")
            if body.status is KernelStatus.VALIDATED:
                if body.sha256 is None:
                    raise _unprocessable("sha256", "status 'validated' needs the artifact's sha256 (value None)")
                try:
                    size = blobs.size(body.sha256)
                except BlobNotFound:
                    raise _unprocessable(
                        "sha256", f"no blob {body.sha256} uploaded: PUT /blobs/{{sha256}} first"
                    ) from None
                row.sha256, row.size_bytes = body.sha256, size
            elif body.status is KernelStatus.FAILED and not body.error:
                raise _unprocessable("error", "status 'failed' needs the error (value None)")
            row.status = body.status.value
            row.error = body.error
            _record(row, body)
            session.commit()
            metrics.kernel_reports.labels(body.status.value).inc()
            return to_out(row)

    @router.get(
        "/{kernel_id}/artifact",
        response_class=Response,
        responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}}, "description": "the artifact"}},
        summary="The kernel's artifact bytes (verified against its sha256 before they are sent)",
    )
    def artifact(kernel_id: Annotated[str, Path(pattern=KERNEL_ID)]) -> Response:
        with sessions() as session:
            row = session.get(KernelRow, kernel_id)
            if row is None:
                raise ApiError(404, f"unknown kernel {kernel_id!r}")
            if row.status != KernelStatus.VALIDATED.value or row.sha256 is None:
                raise ApiError(404, f"kernel {kernel_id} has no artifact (status {row.status})")
            sha = row.sha256
        return serve_blob(blobs, sha, metrics)

    return router
