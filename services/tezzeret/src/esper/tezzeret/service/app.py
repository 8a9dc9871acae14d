"""The Tezzeret service: the compile-request consumer, and ``/healthz``, ``/readyz``, ``/metrics``.

Several Tezzerets share one consumer group (``tezzeret``), so each request is
compiled by one of them; a Tezzeret that dies mid-compile leaves its request
pending, and another claims it after ``claim_idle_ms``.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI
from prometheus_client import REGISTRY

from esper.leyline import streams as ls
from esper.oona import ConsumerOptions, RedisBus, Subscription
from esper.service import BusReadiness, health_router
from esper.tezzeret.compiler import warm_up
from esper.tezzeret.urza import UrzaClient
from esper.tezzeret.worker import Tezzeret, TezzeretMetrics

log = logging.getLogger(__name__)

#: Seconds a shutdown waits for a compile in flight.
STOP_GRACE_S = 5.0
#: A compile takes seconds: read one request at a time, and let another Tezzeret
#: claim a request only after a compile could not still be running.
DEFAULT_OPTIONS = ConsumerOptions(batch_size=1, claim_idle_ms=600_000)


def _warm_up() -> None:
    try:
        log.info("compiler warmed up in %.2fs", warm_up())
    except Exception:  # a warm-up that fails costs the first request some time, nothing else
        log.exception("compiler warm-up failed")


class TezzeretService:
    """``run()`` consumes until :meth:`stop`; ``app`` is the HTTP app."""

    def __init__(
        self,
        bus: RedisBus,
        urza: UrzaClient,
        consumer: str,
        options: ConsumerOptions | None = None,
        *,
        repeats: int = 20,
    ) -> None:
        self.bus = bus
        self.urza = urza
        self.metrics = TezzeretMetrics()
        self.tezzeret = Tezzeret(bus, urza, self.metrics, repeats=repeats)
        self.subscription: Subscription = bus.subscribe(
            ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, consumer, self.tezzeret.handle, options or DEFAULT_OPTIONS
        )
        self.readiness = BusReadiness(bus.client.ping)
        self.app = FastAPI(title="Esper Tezzeret", description="The compiler: blueprints into validated kernels.")
        self.app.include_router(health_router(self.readiness.not_ready, (self.metrics.registry, REGISTRY)))

    async def run(self) -> None:
        # Warm the compiler in its thread while consuming starts: a first request queues behind it.
        self.tezzeret.compiler.submit(_warm_up)
        async with self.readiness.consuming():
            await self.subscription.run()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop consuming; a compile still running after ``grace_s`` is abandoned.

        Its request stays unacknowledged, so it is delivered again (to this
        consumer when it restarts, or claimed by another Tezzeret): nothing is
        lost, and a supervisor's SIGTERM is answered in seconds, not after a
        compile that may take minutes.
        """
        try:
            await asyncio.wait_for(self.subscription.stop(), timeout=grace_s)
        except TimeoutError:
            log.warning("a compile is still running after %.0fs: abandoned, its request stays pending", grace_s)
        self.tezzeret.stop_timing()
        self.tezzeret.compiler.shutdown(wait=False, cancel_futures=True)
        await self.bus.aclose()
        self.urza.close()
