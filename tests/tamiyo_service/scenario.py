"""Shared pieces of the Tamiyo service tests: signals of a plateauing run and a stack on a real Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from esper.leyline import Envelope, Message, SeedStage, SeedStateReport, TrainingJob, TrainingSignals, decode
from esper.leyline import streams as ls
from esper.oona import RedisBus
from esper.tamiyo.collector import HealthCollector, RunStore
from esper.tamiyo.safety import SafetyConfig, SafetyMonitor
from esper.tamiyo.service.control import RunControl
from esper.tamiyo.service.loop import DecisionLoop
from esper.tamiyo.service.metrics import TamiyoMetrics

#: digits loads in a fraction of a second and has the three slots of ConvHost1D.
JOB = TrainingJob(task="digits", epochs=20)
SLOTS = ("s1", "s2", "s3")


def signals(epoch: int, stages: dict[str, SeedStage] | None = None, val_accuracy: float = 0.5) -> TrainingSignals:
    """An epoch of a run whose validation accuracy has stopped improving (the heuristic germinates at epoch 2)."""
    stages = stages or {}
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.0,
        val_loss=1.0,
        train_accuracy=0.5,
        val_accuracy=val_accuracy,
        params_total=800,
        seeds=[SeedStateReport(slot_id=s, stage=stages.get(s, SeedStage.DORMANT)) for s in SLOTS],
    )


def envelope(run_id: str, message: Message, produced_at: float | None = None) -> Envelope[Message]:
    return Envelope(payload=message, run_id=run_id, produced_at=time.time() if produced_at is None else produced_at)


def published(redis_url: str, stream: str) -> list[Envelope[Message]]:
    """Every envelope on ``stream``, oldest first, read with plain redis-py."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [decode(fields[ls.ENVELOPE_FIELD.encode()]) for _, fields in client.xrange(stream)]
    finally:
        client.close()


@dataclass
class Stack:
    bus: RedisBus
    store: RunStore
    collector: HealthCollector
    loop: DecisionLoop
    control: RunControl
    metrics: TamiyoMetrics

    async def aclose(self) -> None:
        await self.bus.aclose()
        await self.store.aclose()


async def stack(redis_url: str, safety: SafetyConfig | None = None, *, restore: bool = True) -> Stack:
    """Tamiyo's objects as the service wires them, on ``redis_url``; saved runs restored."""
    bus, store, metrics = RedisBus.from_url(redis_url), RunStore.from_url(redis_url), TamiyoMetrics()
    collector = HealthCollector(store)
    if restore:
        await collector.restore()
    monitor = SafetyMonitor(safety)
    return Stack(
        bus,
        store,
        collector,
        DecisionLoop(collector, monitor, bus, metrics),
        RunControl(collector, monitor, bus, metrics),
        metrics,
    )
