"""Bearer-token auth for Urza's writes, and its error shape (``{"reason": ...}``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="ESPER_API_TOKEN")

#: Documented answers of every write route (the auth dependency's).
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong bearer token"},
    503: {"description": "no token configured: writes disabled"},
}


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


def token_guard(token: str | None) -> Callable[..., None]:
    """A dependency admitting requests that bear ``token``: 401 without one, 403 wrong, 503 none configured."""

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if token is None:
            raise ApiError(503, "no API token configured: set ESPER_API_TOKEN to enable writes")
        if credentials is None:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(403, "wrong bearer token")

    return require_token
