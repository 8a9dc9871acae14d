"""Readiness of a bus-driven service: its consumers run and Redis answered a PING recently.

``/readyz`` must not claim ready while Redis is gone (the consumers reconnect on
their own, but a load balancer or ``esper up`` should know), so a small loop
PINGs Redis and remembers when it last answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between PINGs.
PING_INTERVAL_S = 1.0
#: A PING answered longer ago than this makes the service not ready.
PING_STALE_S = 5.0


class BusReadiness:
    """``not_ready()`` for :func:`esper.service.health_router`; ``consuming()`` around the consumers' run."""

    def __init__(
        self, ping: Callable[[], Awaitable[Any]], *, interval_s: float = PING_INTERVAL_S, stale_s: float = PING_STALE_S
    ) -> None:
        self._ping = ping
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._last_pong: float | None = None
        self._consuming = False

    def not_ready(self) -> str | None:
        """None once the consumers run and Redis answered within ``stale_s``, else why not."""
        if not self._consuming:
            return "consumers not started"
        if self._last_pong is None:
            return "redis has not answered yet"
        age = time.monotonic() - self._last_pong
        if age > self.stale_s:
            return f"redis has not answered for {age:.1f}s"
        return None

    @asynccontextmanager
    async def consuming(self) -> Iterator[None]:  # type: ignore[misc]
        """Within: the service counts as consuming and Redis is PINGed every ``interval_s``."""
        pinger = asyncio.ensure_future(self._ping_forever())
        self._consuming = True
        try:
            yield
        finally:
            self._consuming = False
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._ping(), timeout=self.interval_s)
                self._last_pong = time.monotonic()
            except Exception as exc:  # only means "not ready"; the consumers reconnect by themselves
                log.debug("redis ping failed: %s", exc)
            await asyncio.sleep(self.interval_s)
