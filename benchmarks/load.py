"""Load: N concurrent runs' telemetry at epoch cadence against one Tamiyo and one Nissa.

    python benchmarks/load.py                       # 50 runs, 8 epochs each, one epoch per run every 2 s
    python benchmarks/load.py --runs 10 --epochs 4  # a quick look

Fifty real trainings do not fit on a small machine, so the messages come from a
real one: phase 1 runs one short job through the real stack (Tolaria trains it,
Tamiyo steers it) and records the job and what Tolaria published (its ModelGraph, each
epoch's TrainingSignals and LayerHealth, its events). Phase 2 restarts Tamiyo
and Nissa alone on an empty Redis and replays that recording as N runs at
once (fresh run and message ids, each run one epoch every ``--epoch-s``
seconds, start times staggered), as N Tolarias would publish it.

Measured: decision latency (the epoch's TrainingSignals produced -> Tamiyo's
AdaptationDecision produced, from the streams), Nissa's lag behind the training
stream (its group's lag + pending, sampled), the time Nissa needs to drain after
the last epoch, and CPU seconds / peak RSS per service (psutil).

Phase 3 (``--replica-runs``, default the same N; 0 skips it) replays the recording
against two Tamiyo replicas (``esper.tamiyo.service`` twice, default lease
``--lease-ms`` 5000, the claim timeout): the runs are sharded between them (issue
15's RunShards; run leases sampled every 0.1 s), each run's epochs are decided in
order by one replica at a time (decisions in epoch order per run; the replicas that
read each run's routed stream), and halfway through the replica that owns most
runs is SIGKILLed: every run it owned must be leased by the survivor (how long
after the kill, against the lease), and every epoch still be decided once, in order.
JSON on the last line, under ``replicas``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_server import RedisServer, free_port

from esper.cli.stack import RestartPolicy, ServiceSpec, Stack, default_specs
from esper.leyline import AdaptationDecision, Envelope, ModelGraph, TrainingSignals, decode, encode
from esper.leyline import streams as ls
from esper.leyline.codec import CodecError

TOKEN = "load-token"
_FIELD = ls.ENVELOPE_FIELD.encode()
TEMPLATE_JOB = {
    "task": "mnist1d",
    "policy": "heuristic",
    "max_train_samples": 400,
    "lr": 0.0003,
    "lr_schedule": "constant",
    "lockstep": True,
    "lockstep_timeout_ms": 3000,
}
REPLAYED = (ls.CONTROL_JOBS, ls.TELEMETRY_TRAINING, ls.TELEMETRY_HEALTH, ls.TELEMETRY_EVENTS)


def entries(client: redis.Redis, stream: str) -> list[Envelope[Any]]:
    out = []
    for _, fields in client.xrange(stream):
        try:
            out.append(decode(fields[_FIELD]))
        except CodecError:  # anything undecodable is not part of the recording
            continue
    return out


def stack_of(names: tuple[str, ...], server: RedisServer, root: Path) -> Stack:
    ports = {name: free_port() for name in ("tamiyo", "tolaria", "nissa")}
    return started([s for s in default_specs(ports) if s.name in names], server, root)


def started(specs: list[ServiceSpec], server: RedisServer, root: Path) -> Stack:
    """The services of ``specs`` on ``server``, started, with run and log folders under ``root``, never restarted."""
    return Stack(
        specs,
        redis_url=server.url,
        runs_dir=root / "runs",
        logs_dir=root / "logs",
        api_token=TOKEN,
        restart=RestartPolicy(max_restarts=0),
    ).start()


def record_template(server: RedisServer, root: Path, epochs: int) -> dict[int, list[tuple[str, Any]]]:
    """Run one real job; return what Tolaria published, by epoch (-1: before the first epoch)."""
    stack = stack_of(("tamiyo", "tolaria", "nissa"), server, root / "template")
    try:
        stack.wait_ready(timeout_s=180)
        api = httpx.Client(base_url=stack["tamiyo"].url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        run_id = api.post("/runs", json={**TEMPLATE_JOB, "epochs": epochs, "run_id": "template"}).json()["run_id"]
        deadline = time.monotonic() + 600
        while not api.get(f"/runs/{run_id}").json()["finished"]:
            assert time.monotonic() < deadline, "the template run did not finish"
            time.sleep(0.5)
        api.close()
    finally:
        stack.stop()
    client = redis.Redis.from_url(server.url)
    by_epoch: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    for stream in REPLAYED:
        epoch = -1
        for envelope in entries(client, stream):
            if envelope.run_id != "template":
                continue
            payload = envelope.payload
            epoch = getattr(payload, "epoch", epoch) if not isinstance(payload, ModelGraph) else epoch
            by_epoch[epoch].append((stream, payload))
    client.flushall()
    client.close()
    return by_epoch


class Sampler(threading.Thread):
    """CPU seconds, RSS and Nissa's lag, sampled every ``every_s`` until stopped."""

    def __init__(self, stack: Stack, url: str, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(s.pid) for name, s in stack.services.items() if s.pid}
        self.client = redis.Redis.from_url(url)
        self.every_s = every_s
        self.stop_event = threading.Event()
        self.rss: dict[str, int] = defaultdict(int)
        self.lag: list[int] = []

    def nissa_backlog(self) -> int:
        for info in self.client.xinfo_groups(ls.TELEMETRY_TRAINING):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == ls.GROUP_NISSA:
                return int(info.get("lag") or 0) + int(info["pending"])
        return 0

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            for name, proc in self.procs.items():
                self.rss[name] = max(self.rss[name], proc.memory_info().rss)
            try:
                self.lag.append(self.nissa_backlog())
            except redis.ResponseError:
                pass

    def cpu(self) -> dict[str, float]:
        return {name: sum(p.cpu_times()[:2]) for name, p in self.procs.items()}


def replay(url: str, template: dict[int, list[tuple[str, Any]]], runs: int, epoch_s: float) -> tuple[list[str], float]:
    """Publish the template as ``runs`` runs, one epoch per run every ``epoch_s`` seconds; returns ids, last publish."""
    client = redis.Redis.from_url(url)
    run_ids = [f"load-{i:03d}" for i in range(runs)]
    epochs = sorted(template)
    start = time.monotonic()
    # Run i publishes epoch k at start + k * epoch_s + i * epoch_s / runs: N runs spread over each period.
    schedule = sorted(
        (start + k * epoch_s + i * epoch_s / runs, i, epoch) for i in range(runs) for k, epoch in enumerate(epochs)
    )
    for at, i, epoch in schedule:
        time.sleep(max(0.0, at - time.monotonic()))
        pipe = client.pipeline(transaction=False)
        for stream, payload in template[epoch]:
            data = encode(Envelope(payload=payload, run_id=run_ids[i]))
            pipe.xadd(stream, {_FIELD: data}, maxlen=ls.maxlen_for(stream), approximate=True)
        pipe.execute()
    last = time.time()
    client.close()
    return run_ids, last


def latencies(url: str, run_ids: list[str]) -> list[float]:
    client = redis.Redis.from_url(url)
    produced: dict[tuple[str, int], float] = {}
    for envelope in entries(client, ls.TELEMETRY_TRAINING):
        if isinstance(envelope.payload, TrainingSignals):
            produced[(envelope.run_id, envelope.payload.epoch)] = envelope.produced_at
    out = []
    wanted = set(run_ids)
    for envelope in entries(client, ls.CONTROL_DECISIONS):
        if isinstance(envelope.payload, AdaptationDecision) and envelope.run_id in wanted:
            start = produced.get((envelope.run_id, envelope.payload.epoch))
            # The first of the epoch's decisions (a policy may decide several per epoch, index 0..count-1).
            if start is not None and envelope.payload.policy != "operator" and envelope.payload.index == 0:
                out.append(envelope.produced_at - start)
    client.close()
    return out


class Leases(threading.Thread):
    """Which Tamiyo replica holds each run's lease, sampled every ``every_s`` (time, owners)."""

    def __init__(self, url: str, run_ids: list[str], every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.keys = [f"{ls.OWNERSHIP_PREFIX}:{ls.GROUP_TAMIYO}:lease:{r}" for r in run_ids]
        self.run_ids, self.every_s = run_ids, every_s
        self.samples: list[tuple[float, dict[str, str | None]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.every_s):
            values = self.client.mget(self.keys)
            owners = {r: (v.decode() if v else None) for r, v in zip(self.run_ids, values, strict=True)}
            self.samples.append((time.monotonic(), owners))

    def at(self, when: float) -> dict[str, str | None]:
        """The last sample taken before ``when``."""
        return [o for t, o in self.samples if t < when][-1]


def two_replicas(
    server: RedisServer,
    root: Path,
    template: dict[int, list[tuple[str, Any]]],
    runs: int,
    epoch_s: float,
    lease_ms: int,
) -> dict[str, Any]:
    """Phase 3: the replay against two Tamiyo replicas, one SIGKILLed halfway (see the module docstring)."""
    redis.Redis.from_url(server.url).flushall()
    names = ("tamiyo-a", "tamiyo-b")
    specs = [ServiceSpec(n, "esper.tamiyo.service", free_port(), ("--lease-ms", str(lease_ms))) for n in names]
    stack = started(specs, server, root)
    consumer = {n: f"{n}-{stack[n].spec.port}" for n in names}
    run_ids = [f"load-{i:03d}" for i in range(runs)]
    leases = Leases(server.url, run_ids)
    try:
        stack.wait_ready(timeout_s=120)
        leases.start()
        replayer = threading.Thread(target=replay, args=(server.url, template, runs, epoch_s))
        began = time.monotonic()
        replayer.start()
        time.sleep(epoch_s * (len(template) - 1) / 2)  # halfway through the epochs
        before = leases.at(time.monotonic())
        held = {n: sorted(r for r, o in before.items() if o == consumer[n]) for n in names}
        victim = max(names, key=lambda n: len(held[n]))
        survivor = next(n for n in names if n != victim)
        killed_at = time.monotonic()
        stack[victim].signal(signal.SIGKILL)  # max_restarts=0: it stays dead
        replayer.join()
        time.sleep(2 * lease_ms / 1000 + 2)  # the survivor's last adoptions and decisions
    finally:
        leases.stop_event.set()
        leases.join()
        stack.stop()
    moved_after: list[float] = []
    unmoved = []
    for run_id in held[victim]:
        taken = [t for t, o in leases.samples if t > killed_at and o[run_id] == consumer[survivor]]
        if taken:
            moved_after.append(taken[0] - killed_at)
        else:
            unmoved.append(run_id)
    client = redis.Redis.from_url(server.url)
    # Each epoch's decisions are numbered (index of count): (epoch, index) is decided once, in order.
    decided: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for envelope in entries(client, ls.CONTROL_DECISIONS):
        if isinstance(envelope.payload, AdaptationDecision) and envelope.payload.policy != "operator":
            decided[envelope.run_id].append((envelope.payload.epoch, envelope.payload.index))
    readers = {
        r: len(client.xinfo_consumers(ls.routed_stream(ls.GROUP_TAMIYO, "telemetry", r), ls.GROUP_TAMIYO))
        for r in run_ids
    }
    client.close()
    epochs = [e for e in sorted(template) if e >= 0]
    # Owners seen per run before the kill (after its first lease): one replica at a time means one.
    owner_changes_before_kill = sum(
        1
        for r in run_ids
        for (_, a), (t, b) in zip(leases.samples, leases.samples[1:], strict=False)
        if t < killed_at and a[r] and b[r] and a[r] != b[r]
    )
    return {
        "replicas": 2,
        "runs": runs,
        "lease_ms": lease_ms,
        "runs_per_replica_before_kill": {n: len(held[n]) for n in names},
        "unowned_before_kill": sum(1 for o in before.values() if o is None),
        "owner_changes_before_kill": owner_changes_before_kill,
        "killed": victim,
        "killed_at_s": round(killed_at - began, 1),
        "runs_moved": len(moved_after),
        "runs_not_moved": len(unmoved),
        "move_s_median": round(statistics.median(moved_after), 2) if moved_after else None,
        "move_s_max": round(max(moved_after), 2) if moved_after else None,
        # The lease and the dead replica's liveness key both run out lease_ms after its last renewal;
        # then the survivor's scan (every 0.25 s) adopts the runs one by one.
        "move_s_max_beyond_lease": round(max(moved_after) - lease_ms / 1000, 2) if moved_after else None,
        "epochs_decided": sum(len({e for e, _ in v}) for v in decided.values()),
        "epochs_expected": runs * len(epochs),
        "decisions_made_twice": sum(len(v) - len(set(v)) for v in decided.values()),
        "runs_decided_out_of_order": sum(1 for v in decided.values() if v != sorted(v)),
        "runs_read_by_one_replica": sum(1 for r in run_ids if readers[r] == 1),
        "runs_read_by_two_replicas": sum(1 for r in run_ids if readers[r] == 2),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epoch-s", type=float, default=2.0, help="seconds between a run's epochs")
    parser.add_argument("--replica-runs", type=int, default=None, help="runs of phase 3 (default --runs; 0: skip)")
    parser.add_argument("--lease-ms", type=int, default=5000, help="Tamiyo's run lease in phase 3 (default 5000)")
    args = parser.parse_args()
    replica_runs = args.runs if args.replica_runs is None else args.replica_runs
    with tempfile.TemporaryDirectory(prefix="esper-load-") as tmp:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        try:
            template = record_template(server, root, args.epochs)
            epochs = sum(1 for e in template if e >= 0)
            stack = stack_of(("tamiyo", "nissa"), server, root / "load")
            try:
                stack.wait_ready(timeout_s=120)
                sampler = Sampler(stack, server.url)
                cpu_before = sampler.cpu()
                sampler.start()
                began = time.time()
                run_ids, last = replay(server.url, template, args.runs, args.epoch_s)
                deadline = time.monotonic() + 300
                while sampler.nissa_backlog() > 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                drained = time.time()
                time.sleep(1.0)  # Tamiyo's last decisions
                sampler.stop_event.set()
                sampler.join()
                cpu = {n: round(c - cpu_before[n], 2) for n, c in sampler.cpu().items()}
                wall = time.time() - began
                lat = latencies(server.url, run_ids)
            finally:
                stack.stop()
            replicas = (
                two_replicas(server, root / "replicas", template, replica_runs, args.epoch_s, args.lease_ms)
                if replica_runs
                else None
            )
        finally:
            server.stop()
    expected = args.runs * epochs
    result = {
        "runs": args.runs,
        "epochs_per_run": epochs,
        "epoch_s": args.epoch_s,
        "signals_published": expected,
        "decisions": len(lat),
        "decision_latency_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "decision_latency_p99_ms": round(1000 * percentile(lat, 0.99), 1) if lat else None,
        "decision_latency_max_ms": round(1000 * max(lat), 1) if lat else None,
        "nissa_backlog_max_entries": max(sampler.lag, default=0),
        "nissa_backlog_p99_entries": percentile([float(x) for x in sampler.lag], 0.99) if sampler.lag else 0,
        "nissa_drain_after_last_epoch_s": round(drained - last, 2),
        "cpu_s": cpu,
        "cpu_percent_of_one_core": {n: round(100 * c / wall, 1) for n, c in cpu.items()},
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in sampler.rss.items()},
        "wall_s": round(wall, 1),
        "replicas": replicas,
    }
    print(f"{args.runs} runs x {epochs} epochs every {args.epoch_s}s against one Tamiyo and one Nissa")
    print(f"  decisions {len(lat)}/{expected}")
    print(f"  decision latency p50 {result['decision_latency_p50_ms']} ms, p99 {result['decision_latency_p99_ms']} ms")
    print(
        f"  Nissa backlog max {result['nissa_backlog_max_entries']} entries, "
        f"drained {result['nissa_drain_after_last_epoch_s']} s after the last epoch"
    )
    for name in cpu:
        share, rss = result["cpu_percent_of_one_core"][name], result["peak_rss_mb"][name]
        print(f"  {name}: {cpu[name]} CPU s ({share}% of a core), peak RSS {rss} MB")
    if replicas is not None:  # phase 3, one line per figure
        print("two Tamiyo replicas: " + ", ".join(f"{k} {v}" for k, v in replicas.items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
