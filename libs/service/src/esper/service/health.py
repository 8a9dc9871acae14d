"""``/healthz``, ``/readyz`` and ``/metrics``: the routes every service exposes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

#: ``() -> None`` when ready, else a short reason it is not.
ReadinessCheck = Callable[[], str | None]


def health_router(ready: ReadinessCheck, registries: Sequence[CollectorRegistry] = (REGISTRY,)) -> APIRouter:
    """Liveness (the process answers), readiness (``ready()`` says why not) and Prometheus metrics.

    ``registries`` are concatenated in ``/metrics`` (the default registry holds
    Oona's bus metrics; a service may add its own registry).
    """
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: connected and consuming", responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        reason = ready()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        body = b"".join(generate_latest(r) for r in registries)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    return router
