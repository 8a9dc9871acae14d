"""The decision loop on a real Redis: signals -> policy -> safety -> command, then decision; state survives restarts."""

from __future__ import annotations

import asyncio
import time

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

from .scenario import JOB, envelope, published, signals, stack

RUN = "run-loop"


async def plateau(s, epochs, run_id=RUN) -> None:
    for epoch in range(epochs):
        await s.loop.handle(envelope(run_id, signals(epoch)))


def test_a_plateau_germinates_and_the_command_is_published_before_the_decision(clean_redis_url):
    order: list[str] = []

    async def go():
        s = await stack(clean_redis_url)
        publish = s.bus.publish

        async def recording(stream, env):  # the real publish, noting which stream went first
            order.append(stream)
            return await publish(stream, env)

        s.bus.publish = recording
        await s.loop.handle(envelope(RUN, JOB))
        await plateau(s, 2)
        await s.aclose()

    asyncio.run(go())
    assert order[-2:] == [ls.CONTROL_COMMANDS, ls.CONTROL_DECISIONS]
    decisions = [e.payload for e in published(clean_redis_url, ls.CONTROL_DECISIONS)]
    # the default heuristic grows from the first epoch after the host's own (epoch 1 here)
    assert [d.action for d in decisions] == [DecisionAction.WAIT, DecisionAction.GERMINATE]
    germinate = decisions[-1]
    assert germinate.accepted and germinate.command_id == f"{RUN}:e1:germinate:s1"
    assert "plateau" in germinate.reason and 0 < germinate.confidence <= 1
    commands = published(clean_redis_url, ls.CONTROL_COMMANDS)
    assert [c.payload.command_id for c in commands] == [germinate.command_id]
    assert commands[0].payload.blueprint == germinate.blueprint and commands[0].payload.issued_by == "heuristic"


def test_a_redelivered_epoch_is_skipped_and_counted(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
        await plateau(s, 2)
        await s.loop.handle(envelope(RUN, signals(1)))
        run = s.collector.get(RUN)
        await s.aclose()
        return run, s.metrics

    run, metrics = asyncio.run(go())
    assert len(published(clean_redis_url, ls.CONTROL_DECISIONS)) == 2
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
    assert [d.payload.epoch for d in published(clean_redis_url, ls.CONTROL_DECISIONS)] == [0, 2]
    actions = [c.payload.action for c in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert actions[:2] == [CommandAction.PAUSE, CommandAction.RESUME]


def test_a_rejected_decision_is_published_with_its_reason_and_no_command(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url, SafetyConfig(min_confidence=0.99))
        await plateau(s, 2)
        await s.aclose()
        return s.metrics

    metrics = asyncio.run(go())
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
    decisions = [e.payload for e in published(clean_redis_url, ls.CONTROL_DECISIONS)]
    # the restored policy decides epoch 2 (the redelivered epoch 1 was skipped, not decided twice)
    assert [d.epoch for d in decisions] == [0, 1, 2] and decisions[-1].action is DecisionAction.GERMINATE


def test_an_epoch_redecided_after_a_crash_before_saving_repeats_the_same_command_id(clean_redis_url):
    client = redis.Redis.from_url(clean_redis_url)

    async def go():
        first = await stack(clean_redis_url)
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
    commands = [e.payload for e in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert len(commands) == 2 and commands[0].command_id == commands[1].command_id == f"{RUN}:e1:germinate:s1"


def test_results_and_the_end_of_the_run_update_its_state(clean_redis_url):
    async def go():
        s = await stack(clean_redis_url)
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
    assert run.decisions[-1].result == "applied"
    assert run.stopped and run.finished and run.outcome == {"final_test_accuracy": 0.9}
    assert run.seeds["s1"].stage is SeedStage.GERMINATED  # slot states follow telemetry even when not deciding
    assert len(published(clean_redis_url, ls.CONTROL_DECISIONS)) == 3


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
    assert [d.payload.epoch for d in decisions] == [0, 1, 2]
    assert isinstance(published(clean_redis_url, ls.CONTROL_COMMANDS)[0].payload, AdaptationCommand)
    assert metrics.decision_latency._sum.get() > 0 and metrics.policy_seconds._sum.get() > 0
    assert all(isinstance(d.payload, AdaptationDecision) for d in decisions)
