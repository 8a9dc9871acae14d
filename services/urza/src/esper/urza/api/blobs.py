"""``/blobs/{sha256}``: upload (verified against the hash in the path, size-limited) and download (verified)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from esper.urza.api.auth import AUTH_RESPONSES, ApiError
from esper.urza.api.models import BlobOut, Reason, Sha256
from esper.urza.blobs import BlobNotFound, BlobStore, BlobTooLarge, ChecksumMismatch
from esper.urza.metrics import UrzaMetrics

log = logging.getLogger(__name__)


def serve_blob(blobs: BlobStore, sha256: str, metrics: UrzaMetrics) -> Response:
    """The blob's bytes, re-hashed first; a blob that fails is never sent (500, and the store quarantines it)."""
    try:
        data = blobs.get(sha256)
    except BlobNotFound:
        raise ApiError(404, f"no blob {sha256}") from None
    except ChecksumMismatch as exc:
        metrics.checksum_failures.labels("read").inc()
        log.error("stored blob failed its checksum: %s", exc)
        raise ApiError(500, f"stored blob {sha256} failed its checksum and was withdrawn; upload it again") from None
    return Response(content=data, media_type="application/octet-stream", headers={"X-Checksum-Sha256": sha256})


def blob_router(blobs: BlobStore, write: Callable[..., None], metrics: UrzaMetrics) -> APIRouter:
    router = APIRouter(prefix="/blobs", tags=["blobs"])

    @router.put(
        "/{sha256}",
        response_model=BlobOut,
        status_code=201,
        dependencies=[Depends(write)],
        responses={
            **AUTH_RESPONSES,
            413: {"model": Reason, "description": "over the size limit"},
            422: {"model": Reason, "description": "the body does not hash to sha256"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        summary="Upload an artifact under its sha256 (the body must hash to it); idempotent",
    )
    async def put(sha256: Annotated[Sha256, Path()], request: Request) -> BlobOut:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > blobs.max_bytes:
            raise ApiError(413, f"body of {declared} bytes exceeds the limit of {blobs.max_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > blobs.max_bytes:
                raise ApiError(413, f"body exceeds the limit of {blobs.max_bytes} bytes")
        try:
            blobs.put(bytes(body), sha256)
        except ChecksumMismatch as exc:
            metrics.checksum_failures.labels("upload").inc()
            raise ApiError(422, f"body: {exc}") from None
        except BlobTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        metrics.blob_uploads.inc()
        metrics.blob_upload_bytes.inc(len(body))
        return BlobOut(sha256=sha256, size_bytes=len(body))

    @router.get(
        "/{sha256}",
        response_class=Response,
        responses={404: {"model": Reason}, 200: {"content": {"application/octet-stream": {}}}},
        summary="Download a blob (verified against its sha256 before it is sent)",
    )
    def get(sha256: Annotated[Sha256, Path()]) -> Response:
        return serve_blob(blobs, sha256, metrics)

    return router
