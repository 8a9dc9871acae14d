"""The health collector: per-run state, ring buffer, results, and its Redis copy."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from esper.leyline import (
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DecisionAction,
    TrainingJob,
)
from esper.tamiyo.collector import INDEX_KEY, KEY_PREFIX, RECENT_DECISIONS, HealthCollector, RunState, RunStore

from .scenario import JOB, signals


def decision(epoch: int, command_id: str | None = None) -> AdaptationDecision:
    return AdaptationDecision(
        decision_id=f"heuristic-e{epoch}",
        epoch=epoch,
        action=DecisionAction.CULL if command_id else DecisionAction.WAIT,
        reason=f"epoch {epoch}",
        confidence=0.8,
        slot_id="s1" if command_id else None,
        command_id=command_id,
    )


def test_state_is_saved_as_json_under_the_run_key_and_reloaded(clean_redis_url):
    async def go():
        store = RunStore.from_url(clean_redis_url)
        collector = HealthCollector(store)
        run, created = collector.register("r1", JOB)
        policy = await collector.policy_for(run)
        policy.decide(signals(0))
        collector.observe_signals(run, signals(0), 123.0)
        collector.record(run, decision(0))
        run.last_decided_epoch, run.paused = 0, True
        await collector.save(run)
        again = HealthCollector(store)
        assert await again.restore() == 1
        restored = again.get("r1")
        await again.policy_for(restored)
        await store.aclose()
        return created, restored

    created, restored = asyncio.run(go())
    assert created and restored.paused and restored.last_decided_epoch == 0 and restored.signals_at == 123.0
    assert restored.job == JOB and restored.decisions[0].reason == "epoch 0"
    assert restored.policy.tracker.epochs_seen == 1  # the policy's own state came back
    client = redis.Redis.from_url(clean_redis_url)
    saved = json.loads(client.get(KEY_PREFIX + "r1"))
    assert client.smembers(INDEX_KEY) == {b"r1"} and saved["policy_state"]["tracker"]["epochs_seen"] == 1
    client.close()


def test_registering_a_known_run_keeps_its_state():
    async def go():
        collector = HealthCollector()
        run, _ = collector.register("r1", JOB)
        run.paused = True
        again, created = collector.register("r1", TrainingJob(task="mnist1d"))
        return run, again, created

    run, again, created = asyncio.run(go())
    assert again is run and not created and again.paused and again.job == JOB


def test_an_unknown_policy_is_refused_naming_the_field():
    async def go():
        HealthCollector().register("r1", TrainingJob(policy="ppo"))

    with pytest.raises(ValueError, match="field 'policy': unknown policy 'ppo'"):
        asyncio.run(go())


def test_recent_decisions_are_a_bounded_ring():
    run = RunState(run_id="r1", job=JOB, policy_name="heuristic")
    collector = HealthCollector()
    for epoch in range(RECENT_DECISIONS + 5):
        collector.record(run, decision(epoch))
    assert len(run.decisions) == RECENT_DECISIONS and run.decisions[0].epoch == 5


def test_a_duplicate_answer_does_not_hide_the_applied_one():
    run = RunState(run_id="r1", job=JOB, policy_name="heuristic")
    collector = HealthCollector()
    collector.record(run, decision(3, "r1:e3:cull:s1"))
    for status in (CommandStatus.APPLIED, CommandStatus.DUPLICATE):
        result = CommandResult(command_id="r1:e3:cull:s1", action=CommandAction.CULL, status=status, reason=status)
        collector.apply_result(run, result)
    assert (run.decisions[-1].result, run.decisions[-1].result_reason) == ("applied", "applied")


def test_a_run_whose_policy_cannot_be_built_records_why_and_is_not_decided():
    def broken(name, job):
        raise FileNotFoundError(f"no weights for policy {name!r}")

    async def go():
        collector = HealthCollector(policy_factory=broken)
        run, _ = collector.register("r1", TrainingJob())
        policy = await collector.policy_for(run)
        return run, policy, collector.skip_reason(run, signals(0))

    run, policy, skip = asyncio.run(go())
    assert policy is None and "no weights for policy 'heuristic-per-slot'" in run.error
    assert skip is not None and skip[0] == "no_policy"
