"""Shared pieces of the Tamiyo service tests: signals of a plateauing run and a stack on a real Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from esper.leyline import (
    AdaptationDecision,
    Envelope,
    Message,
    SeedStage,
    SeedStateReport,
    TrainingJob,
    TrainingSignals,
    decode,
)
from esper.leyline import streams as ls
from esper.oona import RedisBus
from esper.tamiyo.collector import HealthCollector, RunStore
from esper.tamiyo.safety import SafetyConfig, SafetyMonitor
from esper.tamiyo.service.control import RunControl
from esper.tamiyo.service.loop import DecisionLoop
from esper.tamiyo.service.metrics import TamiyoMetrics

#: digits loads in a fraction of a second and has the three slots of ConvHost1D; its heuristic decides once
#: per boundary, which keeps the scenarios to one decision a boundary
JOB = TrainingJob(task="digits", epochs=20, policy="heuristic")
#: the same job with the default policy, the heuristic asked once per slot at a boundary
PER_SLOT_JOB = TrainingJob(task="digits", epochs=20)
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


def boundaries(run_id: str, decisions: list[AdaptationDecision]) -> list[list[AdaptationDecision]]:
    """``decisions`` (as published, oldest first) cut into epoch boundaries, each checked to be whole: one
    epoch, indexes ``0 .. count - 1`` in order, ids after the first ``<first id>.<index>``, one slot at most
    once, and every command id ``<run>:e<epoch>:<action>:<slot>``."""
    cut: list[list[AdaptationDecision]] = []
    for d in decisions:
        if d.index == 0:
            cut.append([])
        assert cut, f"decision {d.decision_id} (index {d.index}) opens no boundary"
        cut[-1].append(d)
    for boundary in cut:
        first = boundary[0]
        assert [d.index for d in boundary] == list(range(first.count)), [d.decision_id for d in boundary]
        assert {d.count for d in boundary} == {first.count} and {d.epoch for d in boundary} == {first.epoch}
        assert [d.decision_id for d in boundary[1:]] == [f"{first.decision_id}.{i}" for i in range(1, first.count)]
        slots = [d.slot_id for d in boundary if d.slot_id is not None]
        assert len(slots) == len(set(slots)), slots
        for d in boundary:
            if d.command_id is not None:
                assert d.command_id == f"{run_id}:e{d.epoch}:{d.action.value}:{d.slot_id}"
    return cut


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
