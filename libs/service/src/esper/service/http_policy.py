"""What a service's HTTP server admits: request bodies up to a size, cross-origin calls only when configured.

:class:`BodyLimit` refuses a body larger than ``max_body_bytes`` with 413
before the application reads it: at once when ``Content-Length`` says so, and
as soon as a streamed (chunked) body passes the limit otherwise. CORS is off
unless origins are configured (browsers then refuse cross-origin calls);
:func:`apply_http_policy` installs both from :class:`ServiceSettings`' values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esper.service.settings import DEFAULT_MAX_BODY_BYTES


class BodyLimit:
    """ASGI middleware: 413 ``{"reason": ...}`` for request bodies over ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(send, declared)
            return
        if declared is None:
            # No Content-Length (a chunked body): read it here, up to the limit, then replay it.
            # (Failing inside the application's receive would surface as its own 400, not a 413.)
            messages: list[Message] = []
            received = 0
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    await self._refuse(send, None)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(messages, receive)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, size: int | None) -> None:
        what = f"request body of {size} bytes" if size is not None else "request body"
        body = json.dumps(
            {"reason": f"{what} exceeds the limit of {self.max_body_bytes} bytes (ESPER_API_MAX_BODY_BYTES)"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def apply_http_policy(
    app: Any, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, cors_origins: Sequence[str] = ()
) -> None:
    """Install the body limit on a Starlette/FastAPI ``app``, and CORS for ``cors_origins`` if any.

    With CORS configured, browsers on those origins may call every method the
    API has with the ``Authorization`` and ``Content-Type`` headers; no
    credentials (cookies) are involved, tokens travel as bearer headers.
    """
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Added last, so it runs first: an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
