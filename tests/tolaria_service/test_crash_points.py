"""Exactly once across a crash at a boundary (the real service process, SIGKILLed at an exact spot, then
restarted): a boundary's command results reach the bus only once the checkpoint holds the boundary.

A boundary that is not checkpointed never happened: the resumed run redoes its epoch from the checkpoint
and applies the command again, to the only model state that survives, so nothing of the first application
may have been published. A boundary that is checkpointed happened: its results must reach the bus even
though the process died before publishing them, and the redelivered command is answered DUPLICATE.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper.leyline import CommandAction, CommandStatus, SeedStage, streams
from esper.tolaria.checkpoint import read_checkpoint

from .harness import Bus, TolariaProcess, wait_until

pytestmark = pytest.mark.slow

RUN = "run-crash-point"
COMMAND = "op-germ"
#: Long enough that the command reaches the run mid-run: tiny epochs take tens of milliseconds on a quiet
#: machine, so a short run could finish between "two epochs seen" and the command (which then finds no
#: boundary to crash at).
EPOCHS = 30


@pytest.fixture
def process(clean_redis_url: str, tmp_path: Path) -> Iterator[TolariaProcess]:
    proc = TolariaProcess(clean_redis_url, tmp_path / "runs", tmp_path / "tolaria.log")
    try:
        yield proc
    finally:
        if proc.process is not None and proc.process.poll() is None:
            proc.kill()


def crash_at_the_commands_boundary(process: TolariaProcess, bus: Bus, point: str) -> None:
    """Train a few epochs, send a germination, let the process kill itself at ``point`` of its boundary."""
    process.start(crash=f"{point}:{COMMAND}")
    bus.submit(RUN, epochs=EPOCHS)
    wait_until(lambda: len(bus.signals(RUN)) >= 2, 120, "two epochs")
    bus.command(RUN, COMMAND, CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light")
    process.wait_crashed()


def logged(run_dir: Path) -> list[dict[str, Any]]:
    """The run's own event log (what the surviving model lineage published)."""
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def germinations(run_dir: Path) -> int:
    return sum(
        1
        for e in logged(run_dir)
        if e["type"] == "seed_transition" and SeedStage(e["to_stage"]) is SeedStage.GERMINATED
    )


def test_killed_before_the_checkpoint_the_command_is_applied_once_by_the_resumed_run(
    process: TolariaProcess, bus: Bus, tmp_path: Path
) -> None:
    crash_at_the_commands_boundary(process, bus, "before-checkpoint")
    run_dir = tmp_path / "runs" / RUN
    saved = read_checkpoint(run_dir)
    assert COMMAND not in saved["applied_commands"]
    # the boundary never happened: nothing it produced is on the bus
    assert bus.result_of(RUN, COMMAND) == []

    process.start()
    finished = bus.wait_finished(RUN, timeout_s=180)
    assert finished.attributes["resumed_from_epoch"] == saved["epoch"]
    results = bus.result_of(RUN, COMMAND)
    assert [r.status for r in results] == [CommandStatus.APPLIED]  # applied once, reported once
    assert results[0].epoch > saved["epoch"]
    assert germinations(run_dir) == 1
    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the job to be acked after the resumed run")
    assert process.terminate() == 0


def test_killed_after_the_checkpoint_the_boundarys_results_are_still_published(
    process: TolariaProcess, bus: Bus, tmp_path: Path
) -> None:
    crash_at_the_commands_boundary(process, bus, "after-checkpoint")
    run_dir = tmp_path / "runs" / RUN
    saved = read_checkpoint(run_dir)
    assert COMMAND in saved["applied_commands"]

    process.start()
    finished = bus.wait_finished(RUN, timeout_s=180)
    assert finished.attributes["resumed_from_epoch"] == saved["epoch"]
    results = bus.result_of(RUN, COMMAND)
    applied = [r for r in results if r.status is CommandStatus.APPLIED]
    # the checkpointed boundary's result is not lost; the redelivered command is answered DUPLICATE
    assert len(applied) == 1 and applied[0].epoch == saved["epoch"]
    assert all(r.status is CommandStatus.DUPLICATE for r in results if r is not applied[0])
    assert germinations(run_dir) == 1
    assert process.terminate() == 0
