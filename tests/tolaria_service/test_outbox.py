"""The outbox journal: a boundary's messages reach the bus only once its checkpoint holds them, and a
checkpointed boundary's journal is published on recovery with its own message ids (fast; no Redis)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import CommandAction, CommandResult, CommandStatus, Envelope, TrainingSignals
from esper.leyline import streams as ls
from esper.tolaria.service.outbox import JOURNAL_NAME, Outbox


class RecordingBus:
    """Publishes into a list: (stream, envelope) in order."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Envelope[Any]]] = []

    async def publish_many(self, stream: str, envelopes: Sequence[Envelope[Any]]) -> list[str]:
        self.published += [(stream, e) for e in envelopes]
        return [str(len(self.published))] * len(envelopes)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def applied(command_id: str) -> CommandResult:
    return CommandResult(command_id=command_id, action=CommandAction.PAUSE, status=CommandStatus.APPLIED, epoch=2)


def signals(epoch: int) -> TrainingSignals:
    return TrainingSignals(epoch=epoch, train_loss=1.0, val_loss=1.0, train_accuracy=0.5, val_accuracy=0.5)


def test_a_sealed_boundary_is_published_only_after_the_checkpoint_and_its_journal_then_goes(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    bus = RecordingBus()
    outbox = Outbox(bus, "run", loop, tmp_path)  # type: ignore[arg-type]
    outbox(signals(2))
    assert outbox.flush() == 1 and [s for s, _ in bus.published] == [ls.TELEMETRY_TRAINING]
    outbox(applied("c1"))
    assert outbox.seal(mark=9) == 1
    assert len(bus.published) == 1 and (tmp_path / JOURNAL_NAME).is_file()  # checkpoint not written yet
    assert outbox.publish_sealed() == 1
    assert bus.published[-1][0] == ls.CONTROL_RESULTS and bus.published[-1][1].payload.command_id == "c1"
    assert not (tmp_path / JOURNAL_NAME).exists()


def test_an_empty_boundary_writes_no_journal(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    outbox = Outbox(RecordingBus(), "run", loop, tmp_path)  # type: ignore[arg-type]
    assert outbox.seal(mark=3) == 0 and not (tmp_path / JOURNAL_NAME).exists()
    assert outbox.publish_sealed() == 0


def test_the_journal_of_a_checkpointed_boundary_is_published_on_recovery_with_the_same_message_ids(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    died = Outbox(RecordingBus(), "run", loop, tmp_path)  # type: ignore[arg-type]
    died(applied("c1"))
    died.seal(mark=9)
    sealed_ids = [e.message_id for e in died._sealed]  # the process dies here, after its checkpoint
    bus = RecordingBus()
    assert Outbox(bus, "run", loop, tmp_path).recover(mark=9) == 1  # type: ignore[arg-type]
    assert [e.message_id for _, e in bus.published] == sealed_ids
    assert [(s, e.run_id, e.payload) for s, e in bus.published] == [(ls.CONTROL_RESULTS, "run", applied("c1"))]
    assert not (tmp_path / JOURNAL_NAME).exists()


@pytest.mark.parametrize("mark", [8, None], ids=["older-checkpoint", "no-checkpoint"])
def test_the_journal_of_a_boundary_the_checkpoint_does_not_hold_is_dropped_unpublished(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mark: int | None
) -> None:
    died = Outbox(RecordingBus(), "run", loop, tmp_path)  # type: ignore[arg-type]
    died(applied("c1"))
    died.seal(mark=9)  # the process dies here, before its checkpoint
    bus = RecordingBus()
    assert Outbox(bus, "run", loop, tmp_path).recover(mark) == 0  # type: ignore[arg-type]
    assert bus.published == [] and not (tmp_path / JOURNAL_NAME).exists()


def test_a_journal_that_does_not_decode_is_an_error_naming_it(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    (tmp_path / JOURNAL_NAME).write_bytes(b"\xc1not msgpack")
    with pytest.raises(ValueError, match=r"field 'journal'.*outbox\.pending"):
        Outbox(RecordingBus(), "run", loop, tmp_path).recover(mark=1)  # type: ignore[arg-type]
