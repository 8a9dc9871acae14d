"""Tamiyo's HTTP control API (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Every route but ``/healthz``, ``/readyz`` and ``/metrics`` (for probes and
Prometheus) and the API's own description (``/docs``, ``/openapi.json``) needs a
bearer token: mutating routes the operator token (``ESPER_API_TOKEN``), read
routes that or the read-only token (``ESPER_API_READ_TOKEN``). Request bodies
over ``max_body_bytes`` are refused with 413; CORS is off unless
``cors_origins`` are given. Errors other than validation (422, FastAPI's field
list) answer ``{"reason": ...}``; Redis not answering in time is 503 with
``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from esper.service import DEFAULT_MAX_BODY_BYTES, ReadinessCheck, apply_http_policy, health_router
from esper.tamiyo.api.adaptations import adaptations_router
from esper.tamiyo.api.auth import ApiError, api_error_handler, token_guard, unavailable_handler
from esper.tamiyo.api.policies import policies_router
from esper.tamiyo.api.runs import runs_router
from esper.tamiyo.service.control import RunControl, Unavailable


def create_app(
    control: RunControl,
    *,
    api_token: str | None,
    ready: ReadinessCheck = lambda: None,
    registries: Sequence[CollectorRegistry] = (REGISTRY,),
    read_token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """The control API over ``control``.

    ``api_token`` None refuses every mutation (503); with neither it nor
    ``read_token`` every read is refused too.
    """
    app = FastAPI(
        title="Esper control API (Tamiyo)",
        version="1.0.0",
        description="Runs, their status and decisions; pause, resume, stop; forced adaptations; policies "
        "(list, switch a run's).",
    )
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(Unavailable, unavailable_handler)
    guard = token_guard(api_token, read_token=read_token)
    read_guard = token_guard(api_token, read_token=read_token, read=True)
    app.include_router(runs_router(control, guard, read_guard))
    app.include_router(adaptations_router(control, guard))
    app.include_router(policies_router(control, read_guard))
    app.include_router(health_router(ready, registries))
    apply_http_policy(app, max_body_bytes=max_body_bytes, cors_origins=cors_origins)
    return app


__all__ = ["create_app"]
