"""The Urza HTTP app: blueprints, kernels and blobs routers, auth, errors, health and metrics.

Every error is ``{"reason": ...}``; a request that fails validation gets 422
whose reason names the field and the value (``body.input_shape.0: ... (value 0)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from esper.service import health_router
from esper.urza.api.auth import ApiError, api_error_handler, token_guard
from esper.urza.api.blobs import blob_router
from esper.urza.api.blueprints import blueprint_router
from esper.urza.api.kernels import kernel_router
from esper.urza.blobs import BlobStore
from esper.urza.catalogue import register_builtins
from esper.urza.metrics import UrzaMetrics

log = logging.getLogger(__name__)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ()))
        value = error.get("input")
        shown = repr(value) if not isinstance(value, bytes | dict | list) or len(repr(value)) < 200 else "..."
        problems.append(f"{field}: {error.get('msg', 'invalid')} (value {shown})")
    return JSONResponse({"reason": "; ".join(problems) or "invalid request"}, status_code=422)


def create_app(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    token: str | None,
    *,
    register_catalogue: bool = True,
    registries: Sequence[CollectorRegistry] = (REGISTRY,),
) -> FastAPI:
    """Urza's app over a migrated database (``sessions``) and a blob store; writes need ``token``."""
    if register_catalogue:
        with sessions() as session:
            added = register_builtins(session)
        if added:
            log.info("registered %d built-in blueprints", added)
    app = FastAPI(
        title="Esper Urza",
        description="The blueprint and kernel store: blueprints, compiled kernels and their artifacts.",
        version="0.1.0",
    )
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    write = token_guard(token)
    metrics = UrzaMetrics()
    app.include_router(blueprint_router(sessions, write))
    app.include_router(kernel_router(sessions, blobs, write, metrics))
    app.include_router(blob_router(blobs, write, metrics))

    def not_ready() -> str | None:
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # any database failure only means "not ready"
            return f"database unavailable: {type(exc).__name__}"
        return None

    app.include_router(health_router(not_ready, (metrics.registry, *registries)))
    return app
