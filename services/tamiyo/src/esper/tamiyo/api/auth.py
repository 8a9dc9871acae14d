"""Bearer-token auth (operator token; read-only token for reads), and the API's error shapes (``{"reason": ...}``)."""

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


def _matches(presented: str, token: str | None) -> bool:
    # Constant time in the presented value; an unconfigured token never matches.
    return token is not None and secrets.compare_digest(presented.encode(), token.encode())


def token_guard(token: str | None, *, read_token: str | None = None, read: bool = False) -> Callable[..., None]:
    """A dependency that admits requests bearing the operator ``token`` (or, when ``read``, ``read_token``).

    401 without credentials, 403 with the wrong ones, 503 when no token that
    could admit the request is configured: the API is never open by default.
    Tokens are compared in constant time and never echoed or logged.
    """
    admitted = (token, read_token) if read else (token,)
    if read:
        unconfigured = "no API token configured: set ESPER_API_TOKEN or ESPER_API_READ_TOKEN to enable read routes"
    else:
        unconfigured = "no API token configured: set ESPER_API_TOKEN to enable mutating routes"

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if all(t is None for t in admitted):
            raise ApiError(503, unconfigured)
        if credentials is None:
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        # Every configured token is compared (no short cut), so timing does not tell which one was close.
        matches = [_matches(credentials.credentials, t) for t in admitted]
        if not any(matches):
            if read_token is not None and not read and _matches(credentials.credentials, read_token):
                raise ApiError(403, "the read-only token cannot change anything: use the operator token")
            raise ApiError(403, "wrong bearer token")

    return require_token
