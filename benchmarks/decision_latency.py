"""Decision latency through the real stack on loopback: telemetry published -> Tamiyo's answer received.

1. Record: a real short MNIST-1D training in this process (the same trainer and
   heuristic as ``esper train``) yields the TrainingSignals Tolaria would publish.
2. Serve: Redis (``--redis-url`` if given and reachable, else a private
   ``redis-server``) and the Tamiyo service as a subprocess (``python -m esper.tamiyo.service``).
3. Replay: for each of ``--runs`` registered runs (``POST /runs``; no Tolaria,
   so no training competes for the CPU), publish the recorded signals one
   epoch at a time as Tolaria would (fresh envelope, ``esper.telemetry.training``)
   and wait for Tamiyo's AdaptationDecision on ``esper.control.decisions`` (and
   its AdaptationCommand on ``esper.control.commands`` when it issues one; the
   command is published first). Latency = publish call started -> decision read
   back. One epoch in flight at a time, so no queueing is measured.
4. Policy alone: ``HeuristicTamiyo.decide`` in process on the same signals and
   model graphs (a fresh policy per pass, as per run), built by Tamiyo's own
   ``make_policy``.
5. Commands of a default run: the same job submitted with the defaults (lockstep)
   to a stack with Tolaria too, trained for real; every command Tamiyo issued
   for it is counted with Tolaria's answer: applied, rejected as stale (decided
   on a slot state that had moved on), rejected for another reason. With
   ``--compare-async`` the same job runs again without lockstep.

The first replayed run is a warm-up and is not counted. Last line:
``{"e2e_p50_ms", "e2e_p99_ms", "policy_p99_ms", "commands": {"issued", "applied",
"stale", "rejected_other"}}`` (plus ``"commands_async"`` with ``--compare-async``).
Targets: e2e p99 <= 50 ms, policy p99 <= 5 ms, no stale command in the default run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import numpy as np
import redis
import redis.asyncio as aioredis

from esper.cli.redis_local import PrivateRedis, free_port, redis_answers, redis_server_binary
from esper.cli.stack import ServiceSpec, Stack
from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    CommandStatus,
    Envelope,
    EventKind,
    Message,
    ModelGraph,
    TelemetryEvent,
    TrainingJob,
    TrainingSignals,
    decode,
    streams,
)
from esper.oona import RedisBus
from esper.tamiyo.policies import make_policy
from esper.tolaria.runs import build_trainer

TOKEN = "bench-token"
_FIELD = streams.ENVELOPE_FIELD.encode()


def record_signals(job: TrainingJob) -> list[TrainingSignals | ModelGraph]:
    """The training stream of a real in-process training (model graphs and signals, in order)."""
    recorded: list[TrainingSignals | ModelGraph] = []

    def sink(message: Message) -> None:
        if isinstance(message, TrainingSignals | ModelGraph):
            recorded.append(message)

    build_trainer(job, sinks=(sink,)).fit()
    return recorded


def policy_times_ms(stream: list[TrainingSignals | ModelGraph], job: TrainingJob, passes: int) -> list[float]:
    """Milliseconds per ``decide`` call of a fresh heuristic policy per pass over the recorded stream."""
    times: list[float] = []
    for _ in range(passes):
        policy, graph = make_policy("heuristic", job), None
        for message in stream:
            if isinstance(message, ModelGraph):
                graph = message
                continue
            started = time.perf_counter()
            policy.decide(message, graph=graph)
            times.append((time.perf_counter() - started) * 1000)
    return times


def next_database(url: str) -> str:
    """``url`` with the next Redis database number (``redis://h:p/0`` -> ``redis://h:p/1``)."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


def command_outcomes(redis_url: str, api_url: str, job: TrainingJob, timeout_s: float) -> dict[str, int]:
    """Submit ``job`` to a stack with Tolaria, wait for its end, and count its commands by Tolaria's answer."""
    client = redis.Redis.from_url(redis_url)
    response = httpx.post(
        f"{api_url}/runs", json=job.to_dict(), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
    )
    response.raise_for_status()
    run_id = response.json()["run_id"]

    def of_run(stream: str) -> list[Message]:
        return [
            e.payload for e in (decode(fields[_FIELD]) for _, fields in client.xrange(stream)) if e.run_id == run_id
        ]

    deadline = time.monotonic() + timeout_s
    while not any(
        isinstance(m, TelemetryEvent) and m.kind == EventKind.RUN_FINISHED for m in of_run(streams.TELEMETRY_EVENTS)
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not finish within {timeout_s:.0f} s")
        time.sleep(0.5)
    time.sleep(1.0)  # the last results follow run_finished's batch
    issued = {m.command_id for m in of_run(streams.CONTROL_COMMANDS) if isinstance(m, AdaptationCommand)}
    answers = {m.command_id: m for m in of_run(streams.CONTROL_RESULTS) if isinstance(m, CommandResult)}
    outcomes = [answers.get(c) for c in issued]
    client.close()
    return {
        "issued": len(issued),
        "applied": sum(1 for r in outcomes if r is not None and r.status is CommandStatus.APPLIED),
        "stale": sum(
            1 for r in outcomes if r is not None and r.status is CommandStatus.REJECTED and r.reason.startswith("stale")
        ),
        "rejected_other": sum(
            1
            for r in outcomes
            if r is not None and r.status is CommandStatus.REJECTED and not r.reason.startswith("stale")
        ),
        "unanswered": sum(1 for r in outcomes if r is None),
    }


async def replay(
    redis_url: str, api_url: str, stream: list[TrainingSignals | ModelGraph], job: TrainingJob, runs: int
) -> tuple[list[float], list[float]]:
    """Per measured epoch: ms to the decision, and (epochs with a command) ms to the command."""
    bus = RedisBus.from_url(redis_url)
    reader = aioredis.Redis.from_url(redis_url, socket_timeout=30.0)
    decision_ms: list[float] = []
    command_ms: list[float] = []
    body = {
        "task": job.task,
        "epochs": job.epochs,
        "seed": job.seed,
        "max_train_samples": job.max_train_samples,
    }
    try:
        async with httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            for index in range(runs + 1):  # run 0 warms up
                run_id = f"bench-{int(time.time())}-{index}"
                response = await api.post("/runs", json={**body, "run_id": run_id})
                response.raise_for_status()
                cursor = {}
                for name in (streams.CONTROL_DECISIONS, streams.CONTROL_COMMANDS):
                    last = await reader.xrevrange(name, count=1)
                    cursor[name] = last[0][0] if last else b"0-0"
                for s in stream:
                    if isinstance(s, ModelGraph):  # Tamiyo prices from it; no decision follows
                        await bus.publish(streams.TELEMETRY_TRAINING, Envelope(payload=s, run_id=run_id))
                        continue
                    started = time.perf_counter()
                    await bus.publish(streams.TELEMETRY_TRAINING, Envelope(payload=s, run_id=run_id))
                    got_command: float | None = None
                    decided: float | None = None
                    while decided is None:
                        # The warm-up run's first epoch builds the cost model: allow it time.
                        replies = await reader.xread(cursor, block=20_000)
                        now = time.perf_counter()
                        if not replies:
                            raise RuntimeError(f"no decision for {run_id} epoch {s.epoch} within 20 s")
                        for name, entries in replies:
                            for entry_id, fields in entries:
                                cursor[name.decode()] = entry_id
                                envelope = decode(fields[_FIELD])
                                if envelope.run_id != run_id:
                                    continue
                                if name.decode() == streams.CONTROL_COMMANDS:
                                    got_command = now
                                elif isinstance(envelope.payload, AdaptationDecision):
                                    if envelope.payload.epoch == s.epoch:
                                        decided = now
                    if index > 0:
                        decision_ms.append((decided - started) * 1000)
                        if got_command is not None:
                            command_ms.append((got_command - started) * 1000)
    finally:
        await bus.aclose()
        await reader.aclose()
    return decision_ms, command_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=None, help="use this Redis (default: a private redis-server)")
    parser.add_argument("--runs", type=int, default=8, help="measured runs (plus one warm-up)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the recorded training")
    parser.add_argument("--max-train-samples", type=int, default=600)
    parser.add_argument("--policy-passes", type=int, default=40)
    parser.add_argument(
        "--run-epochs", type=int, default=12, help="epochs of the default run trained through the stack"
    )
    parser.add_argument("--compare-async", action="store_true", help="also train the run without lockstep")
    args = parser.parse_args()

    t0 = time.perf_counter()
    job = TrainingJob(epochs=args.epochs, max_train_samples=args.max_train_samples)
    signals = record_signals(job)
    epochs = sum(isinstance(m, TrainingSignals) for m in signals)
    print(f"recorded {epochs} epochs of real telemetry in {time.perf_counter() - t0:.1f} s", flush=True)

    private: PrivateRedis | None = None
    if args.redis_url and redis_answers(args.redis_url):
        redis_url = args.redis_url
    else:
        binary = redis_server_binary()
        if binary is None:
            print("no redis-server binary (apt-get install redis-server) and no --redis-url", file=sys.stderr)
            return 2
        private = PrivateRedis(binary).start()
        redis_url = private.url
    tmp = Path(tempfile.mkdtemp(prefix="esper-bench-"))
    quiet = ("--log-level", "WARNING")
    stack = Stack(
        [ServiceSpec("tamiyo", "esper.tamiyo.service", free_port(), quiet)],
        redis_url=redis_url,
        runs_dir=tmp / "runs",
        logs_dir=tmp / "logs",
        api_token=TOKEN,
    )
    trained = TrainingJob(epochs=args.run_epochs, max_train_samples=args.max_train_samples)
    outcomes: dict[str, dict[str, int]] = {}
    try:
        stack.start()
        stack.wait_ready(timeout_s=120)
        decision_ms, command_ms = asyncio.run(replay(redis_url, stack["tamiyo"].url, signals, job, args.runs))
        tamiyo_metrics = httpx.get(f"{stack['tamiyo'].url}/metrics").text
        stack.stop()
        # The replayed runs' jobs are on the first database's jobs stream: train on a fresh one.
        redis_url = next_database(redis_url)
        stack = Stack(
            [
                ServiceSpec("tamiyo", "esper.tamiyo.service", free_port(), quiet),
                ServiceSpec("tolaria", "esper.tolaria.service", free_port(), quiet),
            ],
            redis_url=redis_url,
            runs_dir=tmp / "runs",
            logs_dir=tmp / "logs",
            api_token=TOKEN,
        )
        stack.start()
        stack.wait_ready(timeout_s=120)
        outcomes["commands"] = command_outcomes(redis_url, stack["tamiyo"].url, trained, timeout_s=900)
        if args.compare_async:
            loose = msgspec.structs.replace(trained, lockstep=False)
            outcomes["commands_async"] = command_outcomes(redis_url, stack["tamiyo"].url, loose, timeout_s=900)
    finally:
        stack.stop()
        if private is not None:
            private.stop()

    policy_ms = policy_times_ms(signals, job, args.policy_passes)
    e2e = np.asarray(decision_ms)
    print(f"redis {'private ' if private else ''}{redis_url}; {len(e2e)} epochs measured over {args.runs} runs")
    print(
        f"telemetry -> decision: p50 {np.percentile(e2e, 50):.2f} ms  p90 {np.percentile(e2e, 90):.2f} ms  "
        f"p99 {np.percentile(e2e, 99):.2f} ms  max {e2e.max():.2f} ms"
    )
    if command_ms:
        c = np.asarray(command_ms)
        print(f"telemetry -> command ({len(c)} epochs with a command): p50 {np.median(c):.2f} ms  max {c.max():.2f} ms")
    p = np.asarray(policy_ms)
    print(f"policy.decide alone ({len(p)} calls): p50 {np.median(p):.3f} ms  p99 {np.percentile(p, 99):.3f} ms")
    for line in tamiyo_metrics.splitlines():
        if line.startswith(
            ("esper_tamiyo_decision_latency_seconds_count", "esper_tamiyo_decision_latency_seconds_sum")
        ):
            print(f"tamiyo's own histogram: {line}")
    for name, counts in outcomes.items():
        mode = "async" if name.endswith("async") else "lockstep (default)"
        print(f"{args.run_epochs}-epoch run through the stack, {mode}: {counts}")
    print(
        json.dumps(
            {
                "e2e_p50_ms": round(float(np.percentile(e2e, 50)), 3),
                "e2e_p99_ms": round(float(np.percentile(e2e, 99)), 3),
                "policy_p99_ms": round(float(np.percentile(p, 99)), 3),
                **outcomes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
