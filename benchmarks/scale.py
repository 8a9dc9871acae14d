"""Scale-out: runs finished per hour with 1, 2, 3 Tolaria replicas, and one run's step time in 1 vs 2 DDP processes.

    python benchmarks/scale.py                  # 6 runs per replica count, DDP over 3 alternating repeats
    python benchmarks/scale.py --runs 3 --epochs 3 --ddp-repeats 1   # a quick look
    python benchmarks/scale.py --max-train-samples 4000 --ddp-repeats 0   # a compute-bound job mix

The default mix is short lockstep runs, which spend most of their time waiting
(decisions, the bus), so more replicas overlap more waits; runs on the full
training split are compute-bound, and there the curve follows the cores.

Part 1 starts one Tamiyo and k Tolaria replicas (k = 1, 2, 3; each one run at
a time) as processes on a private Redis, submits the same job mix (``--runs``
lockstep runs with different seeds) and measures the time from the first
submission to the last ``run_finished`` (after one untimed warm-up run per
replica): runs per hour = runs / time. It records how many runs trained at
once (no lock serializes replicas: k replicas train k runs at once), and
samples how busy the machine's CPUs were (psutil, all processes) and the CPU
seconds the replicas spent per run: when the curve flattens while the CPUs are
saturated and the CPU seconds per run stay flat, the limit is the cores, not a
lock or the bus.

Part 2 times the training steps of one run (MNIST-1D, the full 4000 training
rows, batch 100) in one process and in two (``torch.distributed``, gloo), each
side by side over ``--ddp-repeats`` alternating repeats (median):
``ddp_step_ratio`` = step time with 2 processes / step time with 1 (below 1:
faster), against the faster of one process with one thread and with every
core. The JSON on the last line has ``runs_per_hour`` (list by replica
count) and ``ddp_step_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_server import RedisServer, free_port

from esper.cli.stack import ServiceSpec, Stack
from esper.leyline import Envelope, EventKind, TelemetryEvent, TrainingJob, decode, encode
from esper.leyline import streams as ls
from esper.leyline.codec import CodecError

_FIELD = ls.ENVELOPE_FIELD.encode()
JOB = {
    "task": "mnist1d",
    "policy": "heuristic",
    "max_train_samples": 1000,
    "lr": 0.003,
    "lr_schedule": "constant",
    "lockstep": True,
    "lockstep_timeout_ms": 5000,
}


def replica_stack(redis_url: str, root: Path, tolarias: int) -> Stack:
    specs = [ServiceSpec("tamiyo", "esper.tamiyo.service", free_port())]
    specs += [
        ServiceSpec(f"tolaria-{i}", "esper.tolaria.service", free_port(), ("--torch-threads", "1"))
        for i in range(1, tolarias + 1)
    ]
    return Stack(specs, redis_url=redis_url, runs_dir=root / "runs", logs_dir=root / "logs", api_token="scale")


def finished(client: redis.Redis, run_ids: set[str]) -> dict[str, float]:
    """Run id -> when its ``run_finished`` was produced, for the runs of ``run_ids`` that have finished."""
    done = {}
    for _, fields in client.xrange(ls.TELEMETRY_EVENTS):
        try:
            envelope = decode(fields[_FIELD])
        except (CodecError, KeyError):
            continue
        payload = envelope.payload
        if (
            isinstance(payload, TelemetryEvent)
            and payload.kind == EventKind.RUN_FINISHED
            and envelope.run_id in run_ids
        ):
            done[envelope.run_id] = envelope.produced_at
    return done


def first_epochs(client: redis.Redis, run_ids: set[str]) -> dict[str, float]:
    """Run id -> when its first epoch's signals were produced (about when it started training)."""
    first: dict[str, float] = {}
    for _, fields in client.xrange(ls.TELEMETRY_TRAINING):
        try:
            envelope = decode(fields[_FIELD])
        except (CodecError, KeyError):
            continue
        if envelope.run_id in run_ids and envelope.message_type == "training_signals":
            first.setdefault(envelope.run_id, envelope.produced_at)
    return first


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at once: with k replicas and no lock serializing them, k runs train at once."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure_replicas(tolarias: int, runs: int, epochs: int, timeout_s: float, samples: int) -> dict[str, Any]:
    """One replica count: runs/hour, machine CPU busy fraction, replica CPU seconds per run."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        stack = replica_stack(server.url, root, tolarias)
        try:
            stack.start(supervise=False)
            stack.wait_ready(timeout_s=180)
            client = redis.Redis.from_url(server.url)
            # Warm-up, not timed: every replica's first run pays one-time costs (data set, imports, tracing).
            warm = {f"warm-{tolarias}-{i}" for i in range(tolarias)}
            for run_id in sorted(warm):
                job = TrainingJob(**{**JOB, "epochs": 1})
                client.xadd(ls.CONTROL_JOBS, {_FIELD: encode(Envelope(payload=job, run_id=run_id))})
            deadline = time.perf_counter() + timeout_s
            while len(finished(client, warm)) < len(warm) and time.perf_counter() < deadline:
                time.sleep(0.5)
            tag = uuid.uuid4().hex[:6]
            run_ids = {f"scale-{tolarias}-{tag}-{i}" for i in range(runs)}
            pids = [s.pid for n, s in stack.services.items() if n.startswith("tolaria") and s.pid]
            tamiyo = [stack["tamiyo"].pid] if stack["tamiyo"].pid else []
            cpu_before, tamiyo_before = cpu_seconds(pids), cpu_seconds(tamiyo)
            psutil.cpu_percent(interval=None)
            busy: list[float] = []
            started = time.perf_counter()
            for i, run_id in enumerate(sorted(run_ids)):
                job = TrainingJob(**{**JOB, "epochs": epochs, "seed": i, "max_train_samples": samples})
                client.xadd(ls.CONTROL_JOBS, {_FIELD: encode(Envelope(payload=job, run_id=run_id))})
            while set(done := finished(client, run_ids)) != run_ids:
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"{tolarias} replicas: {len(done)}/{runs} runs finished in {timeout_s:.0f}s")
                time.sleep(0.5)
                busy.append(psutil.cpu_percent(interval=None) / 100.0)
            wall = time.perf_counter() - started
            starts = first_epochs(client, run_ids)
            overlap = peak_overlap([(starts[r], done[r]) for r in run_ids if r in starts])
            spent = cpu_seconds(pids) - cpu_before
            tamiyo_spent = cpu_seconds(tamiyo) - tamiyo_before
            client.close()
        finally:
            stack.stop()
            server.stop()
    return {
        "tolarias": tolarias,
        "runs": runs,
        "wall_s": round(wall, 2),
        "runs_per_hour": round(runs / wall * 3600, 1),
        "machine_cpu_busy": round(statistics.mean(busy), 3) if busy else None,
        "tolaria_cpu_s_per_run": round(spent / runs, 2),
        # cores the replicas (and Tamiyo) kept busy on average: against cpu_count, what is left for more replicas
        "tolaria_cores_used": round(spent / wall, 2),
        "peak_runs_training_at_once": overlap,
        "tamiyo_cores_used": round(tamiyo_spent / wall, 2),
    }


# -- DDP step time --------------------------------------------------------------
DDP_JOB = {"task": "mnist1d", "policy": "none", "epochs": 100, "batch_size": 100, "lr": 0.01, "lockstep": False}


def _time_steps(parallel: Any, epochs: int, out: str | None) -> float:
    """Seconds per training step of one run (median over ``epochs`` timed epochs after one warm-up)."""
    from esper.tolaria.runs import build_trainer
    from esper.tolaria.steps import train_epoch

    trainer = build_trainer(TrainingJob(**DDP_JOB), decide_in_process=False, parallel=parallel)
    train_epoch(trainer)  # warm-up
    per_step = []
    for _ in range(epochs):
        step0, start = trainer.step, time.perf_counter()
        train_epoch(trainer)
        per_step.append((time.perf_counter() - start) / max(trainer.step - step0, 1))
    result = statistics.median(per_step)
    if out is not None and (parallel is None or parallel.leader):
        Path(out).write_text(json.dumps(result))
    return result


def _ddp_rank(parallel: Any, epochs: int, out: str) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel.world))
    _time_steps(parallel, epochs, out)


def measure_ddp(repeats: int, epochs: int) -> dict[str, Any]:
    import torch

    from esper.tolaria.distributed import launch

    one: dict[int, list[float]] = {1: [], os.cpu_count() or 1: []}
    two: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "step.json")
        for _ in range(repeats):
            # One process with one thread and with every core: on a shared machine more threads can be slower.
            for threads in one:
                torch.set_num_threads(threads)
                one[threads].append(_time_steps(None, epochs, None))
            launch(2, _ddp_rank, epochs, out)
            two.append(json.loads(Path(out).read_text()))
    best = min(statistics.median(v) for v in one.values())
    return {
        "step_s_1proc_by_threads": {t: round(statistics.median(v), 5) for t, v in one.items()},
        "step_s_1proc": round(best, 5),
        "step_s_2proc": round(statistics.median(two), 5),
        "ddp_step_ratio": round(statistics.median(two) / best, 3),
        "repeats": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=6, help="runs per replica count")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3], help="Tolaria replica counts")
    p.add_argument(
        "--max-train-samples", type=int, default=JOB["max_train_samples"], help="rows per run (4000: compute-bound)"
    )
    p.add_argument("--ddp-repeats", type=int, default=3, help="0: skip the DDP part")
    p.add_argument("--ddp-epochs", type=int, default=3, help="timed epochs per DDP measurement")
    p.add_argument("--timeout-s", type=float, default=900.0)
    args = p.parse_args()

    curve = []
    for k in args.replicas:
        row = measure_replicas(k, args.runs, args.epochs, args.timeout_s, args.max_train_samples)
        print(json.dumps(row), flush=True)
        curve.append(row)
    ddp: dict[str, Any] = {"ddp_step_ratio": None, "step_s_1proc": None, "step_s_2proc": None}
    if args.ddp_repeats > 0:
        ddp = measure_ddp(args.ddp_repeats, args.ddp_epochs)
        print(json.dumps(ddp), flush=True)
    print(
        json.dumps(
            {
                "cpu_count": os.cpu_count(),
                "max_train_samples": args.max_train_samples,
                "replicas": [r["tolarias"] for r in curve],
                "runs_per_hour": [r["runs_per_hour"] for r in curve],
                "machine_cpu_busy": [r["machine_cpu_busy"] for r in curve],
                "tolaria_cpu_s_per_run": [r["tolaria_cpu_s_per_run"] for r in curve],
                "tolaria_cores_used": [r["tolaria_cores_used"] for r in curve],
                "tamiyo_cores_used": [r["tamiyo_cores_used"] for r in curve],
                "peak_runs_training_at_once": [r["peak_runs_training_at_once"] for r in curve],
                "ddp_step_ratio": ddp["ddp_step_ratio"],
                "ddp_step_s": [ddp["step_s_1proc"], ddp["step_s_2proc"]],
            }
        )
    )


if __name__ == "__main__":
    main()
