"""The decision loop on a real Redis: signals -> policy -> safety -> commands, each before its decision (one per
boundary with the default heuristic, one per slot at most with 'heuristic-per-slot'); state survives restarts."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DecisionAction,
    Envelope,
    SeedStage,
    TelemetryEvent,
)
from esper.leyline import streams as ls
from esper.oona import ConsumerOptions
from esper.tamiyo.collector import KEY_PREFIX
from esper.tamiyo.safety import SafetyConfig
from esper.tamiyo.service.loop import CONSUMED_STREAMS

from .scenario import JOB, PER_SLOT_JOB, SLOTS, boundaries, envelope, published, signals, stack

RUN = "run-loop"


G = DecisionAction.GERMINATE


def decided(redis_url: str, run_id: str = RUN) -> list[tuple[int, list[DecisionAction]]]:
    """The published decisions as (epoch, actions) per boundary, each boundary checked whole (``boundaries``)."""
    decisions = [e.payload for e in published(redis_url, ls.CONTROL_DECISIONS)]
    return [(b[0].epoch, [d.action for d in b]) for b in boundaries(run_id, decisions)]


async def plateau(s, epochs, run_id=RUN) -> None:
    for epoch in range(epochs):
        await s.loop.handle(envelope(run_id, signals(epoch)))


@pytest.mark.parametrize(
    ("job", "slots"), [(JOB, SLOTS[:1]), (PER_SLOT_JOB, SLOTS)], ids=["per-boundary", "per-slot (default)"]
)
def test_a_plateau_germinates_and_each_command_is_published_before_its_decision(clean_redis_url, job, slots):
    order: list[str] = []

    async def go():
        s = await stack(clean_redis_url)
        publish = s.bus.publish

        async def recording(stream, env):  # the real publish, noting which stream went first and for which command
            order.append((stream, env.payload.command_id))
            return await publish(stream, env)

        s.bus.publish = recording
        await s.loop.handle(envelope(RUN, job))
        await plateau(s, 2)
        await s.aclose()

    asyncio.run(go())
    # the heuristic grows from the first epoch after the host's own (epoch 1 here): one seed (once per boundary) or
    # one seed per slot (per slot, the default)
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G] * len(slots))]
    germinations = [e.payload for e in published(clean_redis_url, ls.CONTROL_DECISIONS)][1:]
    ids = [f"{RUN}:e1:germinate:{slot}" for slot in slots]
    slots_after_first = range(1, len(slots))
    assert [d.command_id for d in germinations] == ids and all(d.accepted for d in germinations)
    assert [d.decision_id for d in germinations] == ["heuristic-e1", *(f"heuristic-e1.{i}" for i in slots_after_first)]
    assert all("plateau" in d.reason and 0 < d.confidence <= 1 for d in germinations)
    # each decision right after its own command (a WAIT has none)
    pairs = [(stream, i) for i in ids for stream in (ls.CONTROL_COMMANDS, ls.CONTROL_DECISIONS)]
    assert order == [(ls.CONTROL_DECISIONS, None), *pairs]
    commands = [e.payload for e in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert [c.command_id for c in commands] == ids
    blueprints = [c.blueprint for c in commands]
    assert blueprints == [d.blueprint for d in germinations] and None not in blueprints
    assert {c.issued_by for c in commands} == {"heuristic"}
    assert {c.expected_stage for c in commands} == {SeedStage.DORMANT}


def test_a_redelivered_epoch_is_skipped_and_counted(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
        await plateau(s, 2)
        await s.loop.handle(envelope(RUN, signals(1)))
        run = s.collector.get(RUN)
        await s.aclose()
        return run, s.metrics

    run, metrics = asyncio.run(go())
    # epoch 1 decided once: one germination per slot (a run known only from its telemetry has the default job)
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G, G, G])]
    assert run.stale_skipped == 1
    assert metrics.skipped.labels("redelivered")._value.get() == 1


def test_a_paused_run_gets_no_decisions_until_resumed(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
        await s.control.submit(JOB, RUN)
        await s.loop.handle(envelope(RUN, signals(0)))
        await s.control.control(RUN, CommandAction.PAUSE)
        await s.loop.handle(envelope(RUN, signals(1)))
        await s.control.control(RUN, CommandAction.RESUME)
        await s.loop.handle(envelope(RUN, signals(2)))
        await s.aclose()

    asyncio.run(go())
    assert [epoch for epoch, _ in decided(clean_redis_url)] == [0, 2]  # nothing at the paused epoch 1
    actions = [c.payload.action for c in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert actions == [CommandAction.PAUSE, CommandAction.RESUME, CommandAction.GERMINATE]


def test_a_rejected_decision_is_published_with_its_reason_and_no_command(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url, SafetyConfig(min_confidence=0.99))
        await plateau(s, 2)
        await s.aclose()
        return s.metrics

    metrics = asyncio.run(go())
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G])]  # a refusal ends the boundary
    germinate = published(clean_redis_url, ls.CONTROL_DECISIONS)[-1].payload
    assert germinate.action is DecisionAction.GERMINATE and not germinate.accepted
    assert germinate.rejection_reason.startswith("low_confidence: ") and germinate.command_id is None
    assert published(clean_redis_url, ls.CONTROL_COMMANDS) == []
    assert metrics.rejections.labels("low_confidence")._value.get() == 1


def test_old_telemetry_is_decided_on_but_rejected_as_stale(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url, SafetyConfig(max_telemetry_age_s=30.0))
        for epoch in range(3):
            await s.loop.handle(envelope(RUN, signals(epoch), produced_at=time.time() - 300))
        await s.aclose()

    asyncio.run(go())
    assert [actions for _, actions in decided(clean_redis_url)][1:] == [[G], [G]]  # refused: one decision each
    germinate = published(clean_redis_url, ls.CONTROL_DECISIONS)[-1].payload
    assert germinate.action is DecisionAction.GERMINATE and germinate.rejection_reason.startswith("stale: ")
    assert published(clean_redis_url, ls.CONTROL_COMMANDS) == []


def test_a_restarted_tamiyo_continues_the_runs_policy_state(clean_redis_url):
    async def go():
        first = await stack(clean_redis_url)
        await first.loop.handle(envelope(RUN, JOB))
        await plateau(first, 2)
        await first.aclose()
        second = await stack(clean_redis_url)
        run = second.collector.get(RUN)
        policy = await second.collector.policy_for(run)
        seen = policy.tracker.epochs_seen
        await second.loop.handle(envelope(RUN, signals(1)))  # redelivered: already decided before the restart
        await second.loop.handle(envelope(RUN, signals(2)))
        await second.aclose()
        return run, seen

    run, seen = asyncio.run(go())
    assert seen == 2 and run.last_decided_epoch == 2 and run.job == JOB
    # the restored policy decides epoch 2 (the redelivered epoch 1 was skipped, not decided twice), once
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G]), (2, [G])]


def test_an_epoch_redecided_after_a_crash_before_saving_repeats_the_same_command_id(clean_redis_url):
    client = redis.Redis.from_url(clean_redis_url)

    async def go():
        first = await stack(clean_redis_url)
        await first.loop.handle(envelope(RUN, PER_SLOT_JOB))  # every command of the boundary repeats its id
        await plateau(first, 1)
        saved = client.get(KEY_PREFIX + RUN)
        await first.loop.handle(envelope(RUN, signals(1)))
        client.set(KEY_PREFIX + RUN, saved)  # the crash: published, but the state write never happened
        await first.aclose()
        second = await stack(clean_redis_url)
        await second.loop.handle(envelope(RUN, signals(1)))
        await second.aclose()

    asyncio.run(go())
    client.close()
    commands = [e.payload.command_id for e in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert commands == [f"{RUN}:e1:germinate:{slot}" for slot in SLOTS] * 2
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G, G, G]), (1, [G, G, G])]


def test_results_and_the_end_of_the_run_update_its_state(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
        await s.loop.handle(envelope(RUN, PER_SLOT_JOB))  # several commands per boundary
        await plateau(s, 3)
        cid = f"{RUN}:e2:germinate:s1"
        applied = CommandResult(command_id=cid, action=CommandAction.GERMINATE, status=CommandStatus.APPLIED)
        duplicate = CommandResult(command_id=cid, action=CommandAction.GERMINATE, status=CommandStatus.DUPLICATE)
        await s.loop.handle(envelope(RUN, applied))
        await s.loop.handle(envelope(RUN, duplicate))
        stop = CommandResult(command_id="x", action=CommandAction.STOP, status=CommandStatus.APPLIED)
        await s.loop.handle(envelope(RUN, stop))
        await s.loop.handle(envelope(RUN, signals(3, {"s1": SeedStage.GERMINATED})))
        done = TelemetryEvent(kind="run_finished", attributes={"final_test_accuracy": 0.9})
        await s.loop.handle(envelope(RUN, done))
        await s.aclose()
        return s.collector.get(RUN)

    run = asyncio.run(go())
    # the answer lands on the decision that issued the command (s1, first of epoch 2's three), not the newest
    results = {(r.epoch, r.slot_id): r.result for r in run.decisions if r.command_id is not None}
    assert results == {(e, s): "applied" if (e, s) == (2, "s1") else None for e in (1, 2) for s in SLOTS}
    assert run.stopped and run.finished and run.outcome == {"final_test_accuracy": 0.9}
    assert run.seeds["s1"].stage is SeedStage.GERMINATED  # slot states follow telemetry even when not deciding
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G, G, G]), (2, [G, G, G])]


def test_the_service_consumer_decides_from_the_telemetry_stream(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
        consumer = s.bus.subscribe(CONSUMED_STREAMS, ls.GROUP_TAMIYO, "tamiyo-test", s.loop.handle, ConsumerOptions())
        task = asyncio.create_task(consumer.run())
        await s.bus.publish(ls.CONTROL_JOBS, Envelope(payload=JOB, run_id=RUN))
        for epoch in range(3):
            await s.bus.publish(ls.TELEMETRY_TRAINING, Envelope(payload=signals(epoch), run_id=RUN))
        for _ in range(200):
            if s.collector.get(RUN) is not None and s.collector.get(RUN).last_decided_epoch == 2:
                break
            await asyncio.sleep(0.05)
        await consumer.stop()
        await task
        await s.aclose()
        return s.metrics

    metrics = asyncio.run(go())
    decisions = published(clean_redis_url, ls.CONTROL_DECISIONS)
    assert decided(clean_redis_url) == [(0, [DecisionAction.WAIT]), (1, [G]), (2, [G])]
    commands = [e.payload for e in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert all(isinstance(c, AdaptationCommand) for c in commands) and len(commands) == 2
    assert metrics.decision_latency._sum.get() > 0 and metrics.policy_seconds._sum.get() > 0
    assert all(isinstance(d.payload, AdaptationDecision) for d in decisions)


def test_adopting_a_held_run_keeps_an_operators_pause_saved_while_it_read(clean_redis_url):
    """The API registers a run, its first message has the replica adopt it, and a pause is in flight: the
    adoption waits for the pause's save and reads it back (it once put the state saved before it back)."""

    async def go():
        s = await stack(clean_redis_url)
        await s.control.submit(JOB, RUN)
        run = s.collector.get(RUN)
        async with run.lock:  # a pause in flight: it holds the run's lock until it has saved
            adopting = asyncio.create_task(s.loop.adopt(RUN))
            await asyncio.sleep(0.2)
            run.paused = True
            await s.collector.save(run)
        await adopting
        held = s.collector.get(RUN)
        await s.aclose()
        return run, held

    run, held = asyncio.run(go())
    assert held is run and held.paused and held.policy is not None
