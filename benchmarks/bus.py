"""Oona against raw redis-py on the same Redis, side by side in one run.

1. Throughput: N per-epoch training-signals messages published in batches and
   consumed by one consumer group, through Oona (publish_many + a subscribed
   handler) and through raw redis-py (pipelined XADD + XREADGROUP/XACK), with
   the same batch size, the same payload bytes and ``MAXLEN ~`` on both. Runs
   alternate and the median of the repeats is reported, since this machine's
   two cores are shared.
2. Latency: Oona at a steady 1,000 messages/s, publish -> handler entry, p50/p99
   (and raw redis-py measured the same way, as the floor on this machine).
3. ``redis-benchmark``'s pipelined XADD figure, the ceiling of Redis itself.

Redis: ``--url``, else ``ESPER_TEST_REDIS_URL``, else a private ``redis-server``
(like the tests). The last line printed is JSON.

    .venv/bin/python benchmarks/bus.py [--messages 20000] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry

from esper.leyline import Envelope, SeedStage, SeedStateReport, TrainingSignals, encode
from esper.leyline import streams as ls
from esper.oona import BusMetrics, ConsumerOptions, Delivery, RedisBus, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from redis_server import RedisServer

STREAM = ls.TELEMETRY_TRAINING
GROUP = ls.GROUP_NISSA
FIELD = ls.ENVELOPE_FIELD.encode()


def training_signals(epoch: int) -> Envelope[TrainingSignals]:
    """A realistic per-epoch message: losses, accuracies and three slots' reports."""
    seeds = [
        SeedStateReport(
            slot_id=f"block{i}",
            stage=SeedStage.TRAINING if i == 0 else SeedStage.DORMANT,
            seed_id=f"seed-{epoch}-{i}",
            blueprint="conv_residual",
            alpha=0.25 * i,
            epochs_in_stage=epoch % 7,
            params=1200 + i,
            improvement=0.01,
            contribution=0.002,
        )
        for i in range(3)
    ]
    return Envelope(
        payload=TrainingSignals(
            epoch=epoch,
            step=epoch * 125,
            train_loss=0.8,
            val_loss=0.9,
            train_accuracy=0.7,
            val_accuracy=0.68,
            loss_delta=-0.01,
            accuracy_delta=0.004,
            plateau_epochs=1,
            learning_rate=1e-3,
            params_total=5210,
            epoch_seconds=1.7,
            seeds=seeds,
        ),
        run_id="bench",
    )


async def reset(client: Any) -> None:
    await client.delete(STREAM)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


async def raw_run(url: str, payloads: list[bytes], batch: int) -> float:
    """Messages/s of pipelined XADD + XREADGROUP/XACK with plain redis-py."""
    client = connect(url)
    await reset(client)
    total = len(payloads)
    maxlen = ls.maxlen_for(STREAM)

    async def produce() -> None:
        for start in range(0, total, batch):
            pipe = client.pipeline(transaction=False)
            for data in payloads[start : start + batch]:
                pipe.xadd(STREAM, {FIELD: data}, maxlen=maxlen, approximate=True)
            await pipe.execute()

    async def consume() -> None:
        done = 0
        while done < total:
            reply = await client.xreadgroup(GROUP, "raw", {STREAM: ">"}, count=batch, block=100)
            for _, items in reply or ():
                await client.xack(STREAM, GROUP, *[i for i, _ in items])
                done += len(items)

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - start
    await client.aclose()
    return total / elapsed


async def oona_run(url: str, envelopes: list[Envelope[Any]], batch: int) -> float:
    """Messages/s of Oona's publish_many + a subscribed consumer, same batch and payload."""
    bus = RedisBus.from_url(url, metrics=BusMetrics(CollectorRegistry()))
    await reset(bus.client)
    total = len(envelopes)
    handled = 0
    finished = asyncio.Event()

    async def handler(envelope: Envelope[Any], delivery: Delivery) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            finished.set()

    consumer = bus.subscribe(STREAM, GROUP, "oona", handler, ConsumerOptions(batch_size=batch, block_ms=100))

    async def produce() -> None:
        for start in range(0, total, batch):
            await bus.publish_many(STREAM, envelopes[start : start + batch])

    start = time.perf_counter()
    running = asyncio.ensure_future(consumer.run())
    await produce()
    await finished.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await running
    await bus.aclose()
    return total / elapsed


async def latency_run(url: str, rate: float, seconds: float, raw: bool) -> list[float]:
    """Publish -> handler entry in ms, publishing one message every 1/rate s (Oona, or raw redis-py for reference)."""
    bus = RedisBus.from_url(url, metrics=BusMetrics(CollectorRegistry()))
    await reset(bus.client)
    count = int(rate * seconds)
    payloads = [encode(training_signals(e)) for e in range(count)]
    envelopes = [training_signals(e) for e in range(count)]
    sent_at: dict[Any, float] = {}
    latencies: list[float] = []
    finished = asyncio.Event()

    async def handler(envelope: Envelope[Any], delivery: Delivery) -> None:
        latencies.append((time.perf_counter() - sent_at[envelope.message_id]) * 1000.0)
        if len(latencies) == count:
            finished.set()

    async def raw_consumer() -> None:
        client = connect(url)
        while len(latencies) < count:
            reply = await client.xreadgroup(GROUP, "raw", {STREAM: ">"}, count=ls.READ_COUNT, block=1000)
            for _, items in reply or ():
                now = time.perf_counter()
                latencies.extend((now - sent_at[f[FIELD]]) * 1000.0 for _, f in items)
                await client.xack(STREAM, GROUP, *[i for i, _ in items])
        await client.aclose()

    consumer = bus.subscribe(STREAM, GROUP, "latency", handler)
    running = asyncio.ensure_future(raw_consumer() if raw else consumer.run())
    await asyncio.sleep(0.2)
    maxlen = ls.maxlen_for(STREAM)
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if raw:
            sent_at[payloads[n]] = time.perf_counter()
            await bus.client.xadd(STREAM, {FIELD: payloads[n]}, maxlen=maxlen, approximate=True)
        else:
            sent_at[envelopes[n].message_id] = time.perf_counter()
            await bus.publish(STREAM, envelopes[n])
    if raw:
        await asyncio.wait_for(running, 30)
    else:
        await asyncio.wait_for(finished.wait(), 30)
        await consumer.stop()
        await running
    await bus.aclose()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def redis_benchmark_xadd(url: str, payload_len: int, batch: int) -> float | None:
    """redis-benchmark's pipelined XADD requests/s on the same server, or None without the tool."""
    parsed = urlparse(url)
    server = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379)]
    if parsed.password:
        server += ["-a", parsed.password]
    key = f"{STREAM}.redis-benchmark"
    command = ["XADD", key, "MAXLEN", "~", str(ls.maxlen_for(STREAM)), "*", "m", "x" * payload_len]
    try:
        out = subprocess.run(
            ["redis-benchmark", *server, "-n", "200000", "-P", str(batch), "-q", *command],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        subprocess.run(["redis-cli", *server, "DEL", key], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"([\d.]+) requests per second", out.replace("\r", "\n"))
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ESPER_TEST_REDIS_URL"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=ls.READ_COUNT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    args = parser.parse_args()

    server = None
    url = args.url
    if not url:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="esper-bench-redis-"))).start()
        url = server.url
    try:
        envelopes = [training_signals(e) for e in range(args.messages)]
        payloads = [encode(e) for e in envelopes]
        oona_rates: list[float] = []
        raw_rates: list[float] = []
        for repeat in range(args.repeats):
            # Alternate the order so drift on the shared cores hits both sides alike.
            pair = [("raw", raw_run(url, payloads, args.batch)), ("oona", oona_run(url, envelopes, args.batch))]
            if repeat % 2:
                pair.reverse()
            for name, run in pair:
                rate = asyncio.run(run)
                (oona_rates if name == "oona" else raw_rates).append(rate)
                print(f"repeat {repeat} {name:4s}: {rate:10.0f} msg/s", file=sys.stderr)
        latencies = asyncio.run(latency_run(url, args.rate, args.latency_seconds, raw=False))
        raw_latencies = asyncio.run(latency_run(url, args.rate, args.latency_seconds, raw=True))
        ceiling = redis_benchmark_xadd(url, len(payloads[0]), args.batch)
    finally:
        if server is not None:
            server.stop()
    oona = statistics.median(oona_rates)
    raw = statistics.median(raw_rates)
    result = {
        "oona_msgs_per_s": round(oona),
        "raw_msgs_per_s": round(raw),
        "ratio": round(oona / raw, 3),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "raw_p50_ms": round(percentile(raw_latencies, 0.50), 3),
        "raw_p99_ms": round(percentile(raw_latencies, 0.99), 3),
        "redis_benchmark_xadd_per_s": ceiling,
        "messages": args.messages,
        "batch": args.batch,
        "payload_bytes": len(payloads[0]),
        "repeats": args.repeats,
        "latency_messages": len(latencies),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
