"""Helpers for the bus tests (imported as ``oona_helpers``; tests/oona/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from esper.leyline import Envelope, TrainingSignals
from esper.oona import Bus, BusMetrics, ConsumerOptions, Delivery

RUN_ID = "run-test"
#: Short waits so failures and reclaims show within a test's few seconds.
FAST = ConsumerOptions(block_ms=50, retry_delay_ms=20, claim_idle_ms=60_000, stats_interval_ms=50)


def signals(epoch: int, run_id: str = RUN_ID) -> Envelope[TrainingSignals]:
    """A per-epoch training-signals envelope."""
    return Envelope(
        payload=TrainingSignals(
            epoch=epoch, train_loss=1.0 / (epoch + 1), val_loss=1.1, train_accuracy=0.5, val_accuracy=0.4
        ),
        run_id=run_id,
    )


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
    """Run a test coroutine on a fresh event loop, failing instead of hanging."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


class Recorder:
    """A handler that records what it got; ``fail(n)`` makes the next n calls per message raise."""

    def __init__(self, fail_times: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.got: list[tuple[Envelope[Any], Delivery]] = []
        self.calls = 0
        self.fail_times = fail_times
        self.error = error
        self._failed: dict[str, int] = {}

    async def __call__(self, envelope: Envelope[Any], delivery: Delivery) -> None:
        self.calls += 1
        failed = self._failed.get(envelope.message_id, 0)
        if failed < self.fail_times:
            self._failed[envelope.message_id] = failed + 1
            raise self.error(f"boom {failed + 1} on epoch {getattr(envelope.payload, 'epoch', None)}")
        self.got.append((envelope, delivery))

    @property
    def message_ids(self) -> list[str]:
        return [e.message_id for e, _ in self.got]


BusFactory = Callable[..., Bus]


async def consume(consumer: Any, until: Callable[[], bool], what: str = "messages") -> None:
    """Run ``consumer`` until ``until()`` holds, then stop it gracefully."""
    task = asyncio.ensure_future(consumer.run())
    try:
        await eventually(lambda: until() or task.done(), what=what)
    finally:
        await consumer.stop()
        await task


def sample(metrics: BusMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
