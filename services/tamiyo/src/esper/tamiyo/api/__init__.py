"""Tamiyo's HTTP control API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Read routes are open; mutating routes need ``Authorization: Bearer <ESPER_API_TOKEN>``.
Errors other than validation (422, FastAPI's field list) answer ``{"reason": ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from esper.service import ReadinessCheck, health_router
from esper.tamiyo.api.adaptations import adaptations_router
from esper.tamiyo.api.auth import ApiError, api_error_handler, token_guard, unavailable_handler
from esper.tamiyo.api.runs import runs_router
from esper.tamiyo.service.control import RunControl, Unavailable


def create_app(
    control: RunControl,
    *,
    api_token: str | None,
    ready: ReadinessCheck = lambda: None,
    registries: Sequence[CollectorRegistry] = (REGISTRY,),
) -> FastAPI:
    """The control API over ``control``. ``api_token`` None refuses every mutation (503)."""
    app = FastAPI(
        title="Esper control API (Tamiyo)",
        version="1.0.0",
        description="Runs, their status and decisions; pause, resume, stop; forced adaptations; policies.",
    )
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(Unavailable, unavailable_handler)
    guard = token_guard(api_token)
    app.include_router(runs_router(control, guard))
    app.include_router(adaptations_router(control, guard))
    app.include_router(health_router(ready, registries))
    return app


__all__ = ["create_app"]
