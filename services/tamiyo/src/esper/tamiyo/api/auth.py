"""Bearer-token auth for mutating routes, and the API's error shape (``{"reason": ...}``)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from esper.tamiyo.service.control import Unavailable

_bearer = HTTPBearer(auto_error=False, description="ESPER_API_TOKEN")


class ApiError(Exception):
    """An answer other than success: ``status`` with ``{"reason": reason}``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"reason": exc.reason}, status_code=exc.status, headers=exc.headers)


async def unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """Redis did not answer in time: 503, ``Retry-After`` in whole seconds, the reason names the cause."""
    assert isinstance(exc, Unavailable)
    retry_after = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse({"reason": exc.reason}, status_code=503, headers={"Retry-After": retry_after})


def token_guard(token: str | None) -> Callable[..., None]:
    """A dependency that admits requests bearing ``token``.

    401 without credentials, 403 with the wrong ones, 503 when the service has no
    token configured: mutations are never open by default.
    """

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if token is None:
            raise ApiError(503, "no API token configured: set ESPER_API_TOKEN to enable mutating routes")
        if credentials is None:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(403, "wrong bearer token")

    return require_token
