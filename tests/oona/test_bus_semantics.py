"""The behaviour every bus must have, run against Redis and the in-process bus alike."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import msgspec
import pytest
from oona_helpers import FAST, RUN_ID, BusFactory, Recorder, consume, eventually, run, sample, signals

from esper.leyline import DeadLetter, decode, encode
from esper.leyline import streams as ls
from esper.oona import BusMetrics, ConsumerOptions, MemoryIdempotencyStore, RedisBus, RedisIdempotencyStore, idempotent

STREAM = ls.TELEMETRY_TRAINING


async def dead_letters(bus: object) -> list[DeadLetter]:
    """Everything on the dead-letter stream, decoded."""
    if isinstance(bus, RedisBus):
        raw = [fields[b"m"] for _, fields in await bus.client.xrange(ls.DEAD_LETTER)]
    else:
        raw = [data for _, data in bus.entries(ls.DEAD_LETTER)]  # type: ignore[attr-defined]
    return [decode(r).payload for r in raw]  # type: ignore[misc]


def test_messages_published_before_the_first_consumer_are_delivered_in_order(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        sent = [signals(e) for e in range(10)]
        ids = [await bus.publish(STREAM, sent[0]), *await bus.publish_many(STREAM, sent[1:])]
        got = Recorder()
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", got, FAST), lambda: len(got.got) == 10)
        assert got.message_ids == [e.message_id for e in sent]
        assert [d.entry_id for _, d in got.got] == ids
        assert [e.payload for e, _ in got.got] == [e.payload for e in sent]
        assert {(d.stream, d.group, d.consumer, d.deliveries) for _, d in got.got} == {
            (STREAM, ls.GROUP_TAMIYO, "t1", 1)
        }
        await bus.aclose()

    run(scenario())


def test_a_consumer_receives_messages_published_while_it_waits(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        got = Recorder()
        consumer = bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", got, FAST)
        task = asyncio.ensure_future(consumer.run())
        await asyncio.sleep(0.1)
        envelope = signals(1)
        await bus.publish(STREAM, envelope)
        await eventually(lambda: len(got.got) == 1)
        await consumer.stop()
        await task
        assert got.message_ids == [envelope.message_id]
        await bus.aclose()

    run(scenario())


def test_each_group_gets_every_message_and_consumers_of_a_group_share_them(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        sent = [signals(e) for e in range(40)]
        await bus.publish_many(STREAM, sent)
        a, b, nissa = Recorder(), Recorder(), Recorder()
        consumers = [
            bus.subscribe(STREAM, ls.GROUP_TAMIYO, "a", a, dataclasses.replace(FAST, batch_size=4)),
            bus.subscribe(STREAM, ls.GROUP_TAMIYO, "b", b, dataclasses.replace(FAST, batch_size=4)),
            bus.subscribe(STREAM, ls.GROUP_NISSA, "n", nissa, FAST),
        ]
        tasks = [asyncio.ensure_future(c.run()) for c in consumers]
        await eventually(lambda: len(a.got) + len(b.got) == 40 and len(nissa.got) == 40)
        for c in consumers:
            await c.stop()
        await asyncio.gather(*tasks)
        tamiyo_ids = a.message_ids + b.message_ids
        assert sorted(tamiyo_ids) == sorted(e.message_id for e in sent)  # each once, none lost
        assert nissa.message_ids == [e.message_id for e in sent]
        await bus.aclose()

    run(scenario())


def test_a_failing_handler_does_not_ack_and_the_message_comes_again(make_bus: BusFactory, metrics: BusMetrics) -> None:
    async def scenario() -> None:
        bus = make_bus()
        envelope = signals(3)
        await bus.publish(STREAM, envelope)
        got = Recorder(fail_times=2)
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", got, FAST), lambda: len(got.got) == 1)
        assert got.calls == 3
        assert got.got[0][1].deliveries == 3
        assert await dead_letters(bus) == []
        labels = {"stream": STREAM, "group": ls.GROUP_TAMIYO}
        assert sample(metrics, "esper_oona_handler_failures_total", **labels) == 2
        assert sample(metrics, "esper_oona_redeliveries_total", **labels) == 2
        assert sample(metrics, "esper_oona_consumed_total", **labels) == 1
        assert sample(metrics, "esper_oona_handler_duration_seconds_count", **labels) == 3
        await bus.aclose()

    run(scenario())


def test_a_message_that_keeps_failing_is_dead_lettered_with_its_error_and_acked(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        bad, good = signals(1), signals(2)
        bad_id = await bus.publish(STREAM, bad)
        await bus.publish(STREAM, good)
        options = dataclasses.replace(FAST, max_deliveries=3)

        async def handler(envelope: object, delivery: object) -> None:
            if envelope.message_id == bad.message_id:  # type: ignore[attr-defined]
                raise ValueError("slot 'conv2' does not exist")
            handled.append(envelope)

        handled: list[object] = []
        seen_dlq: list[DeadLetter] = []

        async def dlq_done() -> None:
            while not seen_dlq:
                seen_dlq.extend(await dead_letters(bus))
                await asyncio.sleep(0.01)

        consumer = bus.subscribe(STREAM, ls.GROUP_TOLARIA, "w1", handler, options)
        task = asyncio.ensure_future(consumer.run())
        await asyncio.wait_for(dlq_done(), 10)
        await eventually(lambda: len(handled) == 1)
        await consumer.stop()
        await task
        (letter,) = seen_dlq
        assert letter.stream == STREAM and letter.entry_id == bad_id
        assert (letter.group, letter.consumer, letter.deliveries) == (ls.GROUP_TOLARIA, "w1", 3)
        assert letter.error_type == "ValueError" and "conv2" in letter.error
        assert decode(letter.original).message_id == bad.message_id
        assert handled[0].message_id == good.message_id  # type: ignore[attr-defined]
        await bus.aclose()

    run(scenario())


def _tampered(**fields: object) -> bytes:
    """A valid envelope's bytes with some envelope fields replaced."""
    envelope = msgspec.msgpack.decode(encode(signals(0)))
    envelope.update(fields)
    return msgspec.msgpack.encode(envelope)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (bytes(random.Random(7).randrange(256) for _ in range(64)), "field '"),
        (b"\xc1\x00not msgpack at all", "<bytes>"),
        (b"", "'m'"),
        (_tampered(message_type="no_such_message"), "'message_type'"),
        (_tampered(schema_version="9.0"), "'schema_version'"),
        (_tampered(payload={"epoch": -1}), "'payload.epoch'"),
    ],
    ids=["random-bytes", "not-msgpack", "empty", "unknown-type", "incompatible-version", "invalid-payload"],
)
def test_undecodable_bytes_go_to_the_dead_letter_stream_at_once(make_bus: BusFactory, data: bytes, field: str) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish_raw(STREAM, data)
        good = signals(9)
        await bus.publish(STREAM, good)
        got = Recorder()
        await consume(bus.subscribe(STREAM, ls.GROUP_NISSA, "n1", got, FAST), lambda: len(got.got) == 1)
        (letter,) = await dead_letters(bus)
        assert letter.deliveries == 1 and letter.original == data
        assert letter.error_type in ("CodecError", "MissingEnvelope")
        assert field in letter.error, letter.error
        assert got.message_ids == [good.message_id]
        await bus.aclose()

    run(scenario())


def test_a_consumer_restarted_under_the_same_name_first_handles_its_own_pending(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        first, second = signals(1), signals(2)
        await bus.publish(STREAM, first)
        never = dataclasses.replace(FAST, retry_delay_ms=600_000)
        failing = Recorder(fail_times=1)
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", failing, never), lambda: failing.calls == 1)
        await bus.publish(STREAM, second)
        got = Recorder()
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", got, never), lambda: len(got.got) == 2)
        assert got.message_ids == [first.message_id, second.message_id]
        assert [d.deliveries for _, d in got.got] == [2, 1]
        await bus.aclose()

    run(scenario())


def test_entries_a_consumer_abandoned_are_claimed_by_another_after_the_idle_time(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        sent = [signals(e) for e in range(5)]
        await bus.publish_many(STREAM, sent)
        gone = Recorder(fail_times=1)
        abandon = dataclasses.replace(FAST, retry_delay_ms=600_000)
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "dead", gone, abandon), lambda: gone.calls == 5)
        got = Recorder()
        claimer = dataclasses.replace(FAST, claim_idle_ms=100, claim_interval_ms=20)
        await consume(bus.subscribe(STREAM, ls.GROUP_TAMIYO, "alive", got, claimer), lambda: len(got.got) == 5)
        assert got.message_ids == [e.message_id for e in sent]
        assert {d.consumer for _, d in got.got} == {"alive"}
        assert all(d.deliveries == 2 for _, d in got.got)
        await bus.aclose()

    run(scenario())


def test_the_idempotent_wrapper_skips_a_message_id_already_processed(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        store = RedisIdempotencyStore(bus.client, ttl_s=60) if isinstance(bus, RedisBus) else MemoryIdempotencyStore()
        envelope = signals(4)
        await bus.publish_many(STREAM, [envelope, envelope, signals(5)])
        got = Recorder()
        calls = Recorder()

        async def both(env: object, delivery: object) -> None:
            await calls(env, delivery)  # type: ignore[arg-type]
            await wrapped(env, delivery)  # type: ignore[arg-type]

        wrapped = idempotent(got, store)
        await consume(bus.subscribe(STREAM, ls.GROUP_TOLARIA, "w", both, FAST), lambda: calls.calls == 3)
        assert len(got.got) == 2
        assert got.message_ids[0] == envelope.message_id
        # A second group processes the same message id independently.
        other = Recorder()
        await consume(
            bus.subscribe(STREAM, ls.GROUP_NISSA, "n", idempotent(other, store), FAST), lambda: len(other.got) == 2
        )
        await bus.aclose()

    run(scenario())


def test_stop_finishes_and_acks_the_message_in_flight(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish(STREAM, signals(1))
        started, release = asyncio.Event(), asyncio.Event()
        finished: list[int] = []

        async def slow(envelope: object, delivery: object) -> None:
            started.set()
            await release.wait()
            finished.append(1)

        consumer = bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", slow, FAST)
        task = asyncio.ensure_future(consumer.run())
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.ensure_future(consumer.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waits for the handler
        release.set()
        await stopping
        await task
        assert finished == [1]
        again = Recorder()
        # Nothing is pending: a restart of the same consumer gets nothing to redo.
        check = bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t1", again, FAST)
        check_task = asyncio.ensure_future(check.run())
        await asyncio.sleep(0.2)
        await check.stop()
        await check_task
        assert again.calls == 0
        await bus.aclose()

    run(scenario())


def test_a_handler_can_stop_its_own_consumer_and_its_message_is_acked(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish_many(STREAM, [signals(1), signals(2)])
        got = Recorder()

        async def stop_on_first(envelope: object, delivery: object) -> None:
            await got(envelope, delivery)  # type: ignore[arg-type]
            await consumer.stop()

        consumer = bus.subscribe(STREAM, ls.GROUP_TOLARIA, "w", stop_on_first, dataclasses.replace(FAST, batch_size=1))
        await asyncio.wait_for(consumer.run(), 10)
        assert len(got.got) == 1
        rest = Recorder()
        await consume(bus.subscribe(STREAM, ls.GROUP_TOLARIA, "w", rest, FAST), lambda: len(rest.got) == 1)
        assert rest.got[0][1].deliveries == 1  # the first was acked, not redelivered
        await bus.aclose()

    run(scenario())


def test_handlers_run_at_most_concurrency_at_a_time(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish_many(STREAM, [signals(e) for e in range(30)])
        running, peak, done = 0, 0, []

        async def handler(envelope: object, delivery: object) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.005)
            running -= 1
            done.append(1)

        options = dataclasses.replace(FAST, batch_size=10, concurrency=3)
        await consume(bus.subscribe(STREAM, ls.GROUP_NISSA, "n", handler, options), lambda: len(done) == 30)
        assert peak == 3
        await bus.aclose()

    run(scenario())


def test_streams_are_trimmed_to_about_maxlen(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus(maxlen={STREAM: 50})
        for start in range(0, 2000, 100):
            await bus.publish_many(STREAM, [signals(e) for e in range(start, start + 100)])
        if isinstance(bus, RedisBus):
            length = await bus.client.xlen(STREAM)
        else:
            length = len(bus.entries(STREAM))  # type: ignore[attr-defined]
        assert 50 <= length <= 250
        await bus.aclose()

    run(scenario())


def test_lag_and_pending_gauges_follow_the_group(make_bus: BusFactory, metrics: BusMetrics) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish_many(STREAM, [signals(e) for e in range(7)])
        got = Recorder()
        await consume(bus.subscribe(STREAM, ls.GROUP_NISSA, "n", got, FAST), lambda: len(got.got) == 7)
        labels = {"stream": STREAM, "group": ls.GROUP_NISSA}
        # The first stats sample is taken before reading: everything lagging, nothing pending.
        assert sample(metrics, "esper_oona_consumer_group_lag", **labels) in (0, 7)
        assert sample(metrics, "esper_oona_consumer_group_pending", **labels) == 0
        await bus.aclose()

    run(scenario())


def test_envelopes_from_any_run_keep_their_run_id_in_dead_letters(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.publish(STREAM, signals(1, run_id="run-42"))

        async def always(envelope: object, delivery: object) -> None:
            raise KeyError("no such seed")

        options = dataclasses.replace(FAST, max_deliveries=1)
        consumer = bus.subscribe(STREAM, ls.GROUP_TAMIYO, "t", always, options)
        task = asyncio.ensure_future(consumer.run())
        letters: list[DeadLetter] = []

        async def poll() -> None:
            while not letters:
                letters.extend(await dead_letters(bus))
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), 10)
        await consumer.stop()
        await task
        raw = (
            [f[b"m"] for _, f in await bus.client.xrange(ls.DEAD_LETTER)]
            if isinstance(bus, RedisBus)
            else [d for _, d in bus.entries(ls.DEAD_LETTER)]  # type: ignore[attr-defined]
        )
        assert decode(raw[0]).run_id == "run-42" != RUN_ID
        assert letters[0].error_type == "KeyError" and letters[0].deliveries == 1
        await bus.aclose()

    run(scenario())


def test_bad_options_name_the_field_and_value() -> None:
    with pytest.raises(ValueError, match=r"ConsumerOptions.batch_size .* got 0"):
        ConsumerOptions(batch_size=0)
    with pytest.raises(ValueError, match=r"claim_idle_ms .* got -1"):
        ConsumerOptions(claim_idle_ms=-1)


def test_subscribe_rejects_an_empty_group_name(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        with pytest.raises(ValueError, match="group must be a non-empty string, got ''"):
            bus.subscribe(STREAM, "", "c", Recorder())
        await bus.aclose()

    run(scenario())


def test_pending_lists_what_a_consumer_holds_unacknowledged_and_nothing_once_acked(make_bus: BusFactory) -> None:
    async def scenario() -> None:
        bus = make_bus()
        await bus.ping()
        assert await bus.pending(STREAM, ls.GROUP_TOLARIA, "t1") == []  # no group yet
        sent = [signals(1), signals(2)]
        await bus.publish_many(STREAM, sent)
        release = asyncio.Event()
        seen: list[str] = []

        async def hold(envelope: object, delivery: object) -> None:
            seen.append(envelope.message_id)  # type: ignore[attr-defined]
            await release.wait()

        consumer = bus.subscribe(STREAM, ls.GROUP_TOLARIA, "t1", hold, FAST)
        task = asyncio.ensure_future(consumer.run())
        await eventually(lambda: len(seen) == 1, what="first delivery")
        held = await bus.pending(STREAM, ls.GROUP_TOLARIA, "t1")
        assert [e.message_id for e in held][:1] == [sent[0].message_id]
        assert held[0] == sent[0]
        assert await bus.pending(STREAM, ls.GROUP_TOLARIA, "someone-else") == []
        release.set()
        await eventually(lambda: len(seen) == 2, what="second delivery")
        await consumer.stop()
        await task
        assert await bus.pending(STREAM, ls.GROUP_TOLARIA, "t1") == []
        await bus.aclose()

    run(scenario())
