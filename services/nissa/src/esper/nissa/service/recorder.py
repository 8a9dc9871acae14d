"""The Nissa service: every telemetry and control stream, through one consumer group, into :class:`Nissa`.

:class:`NissaService` owns the bus consumer (group ``nissa``), the sink and the
HTTP app (``/healthz``, ``/readyz``, ``/metrics``). ``/metrics`` serves Nissa's
own registry (per-run metrics) followed by the process-wide one (Oona's bus
metrics, process and Python collectors).

Nissa's files go under ``archive_dir`` (default ``<runs_dir>/nissa``), one
folder per run (``events.jsonl``, ``narrative.md``), so they never collide with
the report Tolaria writes into ``<runs_dir>/<run_id>/`` (its own ``events.jsonl``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import REGISTRY

from esper.leyline import Envelope, Message, streams
from esper.nissa.profiles import DiagnosticProfile
from esper.nissa.sink import Nissa
from esper.oona import ConsumerOptions, Delivery, RedisBus, Subscription
from esper.service import BusReadiness, health_router

log = logging.getLogger(__name__)

#: What Nissa records: every stream that carries telemetry, control or failures.
#: Jobs are left out (a submitted job is not yet anything that happened in a run).
NISSA_STREAMS: tuple[str, ...] = (
    streams.TELEMETRY_TRAINING,
    streams.TELEMETRY_HEALTH,
    streams.TELEMETRY_EVENTS,
    streams.CONTROL_COMMANDS,
    streams.CONTROL_RESULTS,
    streams.CONTROL_DECISIONS,
    streams.COMPILE_REQUESTS,
    streams.COMPILE_RESULTS,
    streams.DEAD_LETTER,
)
#: Subfolder of the runs directory that holds Nissa's per-run archives and narratives.
ARCHIVE_SUBDIR = "nissa"


def default_archive_dir(runs_dir: Path) -> Path:
    """Where Nissa writes when not told otherwise: ``<runs_dir>/nissa``."""
    return Path(runs_dir) / ARCHIVE_SUBDIR


class NissaService:
    """Nissa wired to the bus and HTTP.

    ``run()`` is the background loop for :func:`esper.service.serve` (consumes
    until :meth:`stop`), ``app`` the FastAPI app, :meth:`stop` the shutdown hook.
    """

    def __init__(
        self,
        bus: RedisBus,
        archive_dir: Path,
        profile: DiagnosticProfile | str,
        consumer: str,
        options: ConsumerOptions | None = None,
    ) -> None:
        self.bus = bus
        self.nissa = Nissa(Path(archive_dir), profile)
        self.consumer_name = consumer
        self.subscription: Subscription = bus.subscribe(
            NISSA_STREAMS, streams.GROUP_NISSA, consumer, self.handle, options or ConsumerOptions()
        )
        self.readiness = BusReadiness(bus.client.ping)
        self.app = FastAPI(title="Esper Nissa", description="The telemetry sink: metrics, archive, narrative.")
        self.app.include_router(health_router(self.not_ready, (self.nissa.metrics.registry, REGISTRY)))

    async def handle(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Bus handler: record the envelope (an ``OSError`` from the archive makes the bus redeliver)."""
        self.nissa.handle(envelope, redelivered=delivery.deliveries > 1)

    def not_ready(self) -> str | None:
        """``None`` once the consumer runs and Redis answered a PING recently, else why not."""
        return self.readiness.not_ready()

    async def run(self) -> None:
        """Consume every Nissa stream and keep the Redis health current, until :meth:`stop`."""
        async with self.readiness.consuming():
            await self.subscription.run()

    async def stop(self) -> None:
        """Stop reading, finish and ack the batch in flight, close the bus."""
        await self.subscription.stop()
        await self.bus.aclose()
