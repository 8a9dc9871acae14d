"""Faults in the running stack: a service SIGKILLed mid-run, a poison message on a telemetry stream."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import pytest

from esper.cli.stack import Stack
from esper.leyline import CommandStatus, DeadLetter, decode, streams
from esper.oona import RedisBus

from .harness import StackClient, eventually

pytestmark = pytest.mark.slow


def kill_and_wait_restarted(stack: Stack, name: str) -> None:
    service = stack[name]
    old = service.pid
    service.signal(signal.SIGKILL)
    eventually(lambda: service.pid != old and service.readiness() is None, 90, f"{name} restarted and ready")


def test_tamiyo_killed_mid_run_the_run_goes_on_and_no_command_is_applied_twice(
    stack: Stack, client: StackClient
) -> None:
    epochs = 10
    # A short lockstep wait: while Tamiyo is down, each epoch waits this long for its decision.
    run_id = client.submit("kill-tamiyo", epochs=epochs, lockstep_timeout_ms=1500)
    client.wait_epoch(run_id, 2)
    kill_and_wait_restarted(stack, "tamiyo")
    back_at = max(client.epochs(run_id))
    client.wait_finished(run_id)

    assert sorted(set(client.epochs(run_id))) == list(range(1, epochs + 1))
    applied = Counter(r.command_id for r in client.results(run_id) if r.status is CommandStatus.APPLIED)
    assert applied, "no command was applied at all"
    assert all(n == 1 for n in applied.values()), f"applied more than once: {applied}"
    # The restarted Tamiyo went on deciding (it restored the run, it did not start over blind).
    decided = {d.payload.epoch for d in client.messages(streams.CONTROL_DECISIONS, run_id)}
    assert back_at < epochs and any(e > back_at for e in decided), (back_at, sorted(decided))
    assert (stack.runs_dir / run_id / "report.json").is_file()


def test_tolaria_killed_mid_run_resumes_from_its_checkpoint(stack: Stack, client: StackClient) -> None:
    epochs = 10
    run_id = client.submit("kill-tolaria", epochs=epochs)
    client.wait_epoch(run_id, 3)
    kill_and_wait_restarted(stack, "tolaria")
    killed_at = max(client.epochs(run_id))
    assert killed_at < epochs, "the run was over before Tolaria was killed"
    client.wait_finished(run_id)

    # Every epoch was trained, and the first only once: the restarted Tolaria took the job back
    # from its pending entries and went on from the checkpoint instead of starting over.
    published = client.epochs(run_id)
    assert published.count(1) == 1, f"the run started over: {published}"
    assert sorted(set(published)) == list(range(1, epochs + 1))
    report = (stack.runs_dir / run_id / "report.json").read_text()
    assert f'"epochs": {epochs}' in report


def test_poison_on_the_training_stream_is_dead_lettered_and_the_stack_goes_on(
    stack: Stack, client: StackClient
) -> None:
    restarts = {name: s.restarts for name, s in stack.services.items()}

    async def poison() -> str:
        bus = RedisBus.from_url(stack.redis_url)
        try:
            return await bus.publish_raw(streams.TELEMETRY_TRAINING, os.urandom(48))
        finally:
            await bus.aclose()

    entry_id = asyncio.run(poison())

    def dead_letter_groups() -> set[str]:
        groups = set()
        for _, fields in client.redis.xrange(streams.DEAD_LETTER):
            letter = decode(fields[streams.ENVELOPE_FIELD.encode()]).payload
            if isinstance(letter, DeadLetter) and letter.entry_id == entry_id:
                groups.add(letter.group)
        return groups if {streams.GROUP_TAMIYO, streams.GROUP_NISSA} <= groups else set()

    eventually(dead_letter_groups, 30, "the poison entry dead-lettered by Tamiyo and Nissa")
    run_id = client.submit("after-poison", epochs=3)
    client.wait_finished(run_id, timeout_s=90)
    assert {name: s.restarts for name, s in stack.services.items()} == restarts
    assert all(s.readiness() is None for s in stack.services.values())
    assert client.status(run_id)["finished"]
