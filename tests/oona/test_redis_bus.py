"""What only the Redis bus has to prove: the wire format, outages, restarts and crashes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import msgpack
import pytest
import redis
from crash_consumer import OPTIONS as CRASH_OPTIONS
from crash_consumer import command_effect
from oona_helpers import FAST, Recorder, consume, eventually, run, sample, signals
from redis_server import RedisServer

from esper.leyline import AdaptationCommand, CommandAction, Envelope
from esper.leyline import streams as ls
from esper.oona import BusMetrics, BusUnavailable, RedisBus, RedisIdempotencyStore, idempotent

PROTO = Path(__file__).resolve().parents[2] / "proto"
STREAM = ls.TELEMETRY_TRAINING


def test_an_entry_is_one_msgpack_field_any_client_can_read_against_the_json_schema(clean_redis_url: str) -> None:
    envelope = signals(12)

    async def publish() -> str:
        bus = RedisBus.from_url(clean_redis_url)
        entry_id = await bus.publish(STREAM, envelope)
        await bus.aclose()
        return entry_id

    entry_id = run(publish())
    # Plain redis-py + msgpack, no Esper code.
    client = redis.Redis.from_url(clean_redis_url)
    ((raw_id, fields),) = client.xrange(STREAM)
    client.close()
    assert raw_id.decode() == entry_id and list(fields) == [ls.ENVELOPE_FIELD.encode()]
    wire = msgpack.unpackb(fields[ls.ENVELOPE_FIELD.encode()])
    jsonschema.validate(wire, json.loads((PROTO / "envelope.schema.json").read_text()))
    jsonschema.validate(wire["payload"], json.loads((PROTO / f"{wire['message_type']}.schema.json").read_text()))
    assert (wire["message_id"], wire["run_id"], wire["payload"]["epoch"]) == (envelope.message_id, envelope.run_id, 12)
    # redis-cli --raw prints each element and a newline: id, field name, value.
    out = subprocess.run(
        ["redis-cli", "-u", clean_redis_url, "--raw", "XRANGE", STREAM, "-", "+"], capture_output=True, check=True
    ).stdout
    cli_id, cli_field, cli_value = out.split(b"\n", 2)
    assert (cli_id.decode(), cli_field.decode()) == (entry_id, ls.ENVELOPE_FIELD)
    assert msgpack.unpackb(cli_value[:-1]) == wire


def test_publishing_while_redis_is_down_fails_clearly_or_waits_for_it(
    redis_server_factory: Callable[..., RedisServer], metrics: BusMetrics
) -> None:
    server = redis_server_factory()

    async def scenario() -> None:
        at_once = RedisBus.from_url(server.url, publish_timeout_s=0, metrics=metrics)
        patient = RedisBus.from_url(server.url, publish_timeout_s=20, metrics=metrics)
        await at_once.publish(STREAM, signals(0))
        await asyncio.to_thread(server.stop)
        with pytest.raises(BusUnavailable, match=r"stream 'esper.telemetry.training'.*publish_timeout_s"):
            await at_once.publish(STREAM, signals(1))
        with pytest.raises(BusUnavailable):
            await at_once.publish_many(STREAM, [signals(2), signals(3)])
        assert sample(metrics, "esper_oona_publish_failures_total", stream=STREAM) == 2
        waiting = asyncio.ensure_future(patient.publish(STREAM, signals(4)))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(server.start)
        entry_id = await waiting
        assert [i.decode() for i, _ in await patient.client.xrange(STREAM)] == [entry_id]
        await at_once.aclose()
        await patient.aclose()

    run(scenario())


def test_publishers_and_consumers_ride_out_a_redis_restart_without_losing_acknowledged_messages(
    redis_server_factory: Callable[..., RedisServer], metrics: BusMetrics
) -> None:
    server = redis_server_factory(durable=True)
    total = 150

    async def scenario() -> None:
        bus = RedisBus.from_url(server.url, publish_timeout_s=20, metrics=metrics)
        got = Recorder()
        consumer = bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", got, FAST)
        consuming = asyncio.ensure_future(consumer.run())
        acknowledged: list[str] = []

        async def publisher() -> None:
            for epoch in range(total):
                envelope = signals(epoch)
                await bus.publish(STREAM, envelope)
                acknowledged.append(envelope.message_id)
                await asyncio.sleep(0.003)

        publishing = asyncio.ensure_future(publisher())
        await eventually(lambda: len(acknowledged) >= 40, what="40 messages before the restart")
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)
        await publishing
        await eventually(lambda: set(acknowledged) <= set(got.message_ids), what="every acknowledged message handled")
        await consumer.stop()
        await consuming
        assert len(acknowledged) == total
        assert sample(metrics, "esper_oona_reconnects_total", group=ls.GROUP_TAMIYO) >= 1
        # What Redis acknowledged is on disk: after the restart the stream still holds it all.
        stored = {
            msgpack.unpackb(f[ls.ENVELOPE_FIELD.encode()])["message_id"] for _, f in await bus.client.xrange(STREAM)
        }
        assert set(acknowledged) <= stored
        await bus.aclose()

    run(scenario(), timeout_s=60)


def _command(n: int) -> Envelope[AdaptationCommand]:
    return Envelope(
        payload=AdaptationCommand(command_id=f"cmd-{n}", action=CommandAction.CULL, slot_id=f"slot-{n % 3}"),
        run_id="run-crash",
    )


def test_after_a_consumer_is_killed_mid_batch_another_reclaims_and_every_effect_happens_once(
    clean_redis_url: str, metrics: BusMetrics
) -> None:
    total = 200
    effects_key = "test:effects"
    client = redis.Redis.from_url(clean_redis_url)
    commands = [_command(n) for n in range(total)]

    async def publish() -> None:
        bus = RedisBus.from_url(clean_redis_url, metrics=metrics)
        await bus.publish_many(ls.CONTROL_COMMANDS, commands)
        await bus.aclose()

    run(publish())
    script = Path(__file__).with_name("crash_consumer.py")
    child = subprocess.Popen(
        [sys.executable, str(script), clean_redis_url, "doomed", effects_key], env={**os.environ, "PYTHONPATH": ""}
    )

    def applied_but_unacked() -> set[str]:
        pending = client.xpending_range(ls.CONTROL_COMMANDS, ls.GROUP_TOLARIA, "-", "+", 1000, consumername="doomed")
        entries = {p["message_id"] for p in pending}
        if not entries:
            return set()
        ids = {msgpack.unpackb(f[b"m"])["message_id"] for i, f in client.xrange(ls.CONTROL_COMMANDS) if i in entries}
        return {i for i in ids if client.hexists(effects_key, i)}

    try:
        deadline = 20.0
        while not (client.hlen(effects_key) >= 10 and applied_but_unacked()):
            assert child.poll() is None, "the consumer process exited on its own"
            deadline -= 0.005
            assert deadline > 0, "the consumer process never got mid-batch"
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done_before = client.hlen(effects_key)
    redo = applied_but_unacked()
    assert redo, "the kill should leave applied-but-unacked commands for the idempotency check"
    assert done_before < total

    async def survive() -> list[str]:
        bus = RedisBus.from_url(clean_redis_url, metrics=metrics)
        store = RedisIdempotencyStore(bus.client, ttl_s=600)
        inner_calls: list[str] = []
        handler = idempotent(command_effect(store, effects_key, inner_calls), store)
        options = dataclasses.replace(CRASH_OPTIONS, block_ms=50, claim_idle_ms=300, claim_interval_ms=50)
        consumer = bus.subscribe(ls.CONTROL_COMMANDS, ls.GROUP_TOLARIA, "survivor", handler, options)

        def finished() -> bool:
            info = client.xpending(ls.CONTROL_COMMANDS, ls.GROUP_TOLARIA)
            return client.hlen(effects_key) == total and info["pending"] == 0

        await consume(consumer, finished, "every command applied and acked")
        await bus.aclose()
        return inner_calls

    inner_calls = run(survive())
    counts = {k.decode(): int(v) for k, v in client.hgetall(effects_key).items()}
    client.close()
    assert set(counts) == {c.message_id for c in commands}
    assert set(counts.values()) == {1}, "some command was applied twice"
    # The wrapper skipped what the dead consumer had applied, without calling the handler.
    assert len(inner_calls) == total - done_before
    assert not redo & set(inner_calls)
    assert sample(metrics, "esper_oona_redeliveries_total", stream=ls.CONTROL_COMMANDS, group=ls.GROUP_TOLARIA) > 0


def test_a_consumer_recreates_its_group_and_stream_when_redis_lost_them(clean_redis_url: str) -> None:
    async def scenario() -> None:
        bus = RedisBus.from_url(clean_redis_url)
        got = Recorder()
        consumer = bus.subscribe(STREAM, ls.GROUP_NISSA, "n", got, FAST)
        task = asyncio.ensure_future(consumer.run())
        first = signals(1)
        await bus.publish(STREAM, first)
        await eventually(lambda: len(got.got) == 1)
        await bus.client.xgroup_destroy(STREAM, ls.GROUP_NISSA)
        second = signals(2)
        await bus.publish(STREAM, second)
        await eventually(lambda: second.message_id in got.message_ids, what="the message after the group was lost")
        await bus.client.delete(STREAM)  # the whole stream gone, as after a FLUSHALL
        third = signals(3)
        await asyncio.sleep(0.1)
        await bus.publish(STREAM, third)
        await eventually(lambda: third.message_id in got.message_ids, what="the message after the stream was lost")
        assert not task.done()
        await consumer.stop()
        await task
        await bus.aclose()

    run(scenario())
