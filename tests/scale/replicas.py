"""Several Tolaria and Tamiyo replicas on one Redis, as real processes, and what a test reads back from them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from esper.cli.redis_local import free_port
from esper.cli.stack import ServiceSpec, Stack
from esper.leyline import (
    CommandResult,
    CommandStatus,
    Envelope,
    Message,
    TelemetryEvent,
    TrainingJob,
    decode,
    encode,
    streams,
)
from esper.leyline.codec import CodecError

T = TypeVar("T")
_FIELD = streams.ENVELOPE_FIELD.encode()
#: Short leases so a dead replica's runs move within seconds (jobs are claimed after 3x this).
LEASE_MS = 3000
#: A tiny lockstep job: a learning rate so small that validation plateaus at once, so the heuristic
#: germinates within a few epochs and every run gets commands.
TINY_JOB = {
    "task": "mnist1d",
    "policy": "heuristic",
    "max_train_samples": 300,
    "lr": 0.0003,
    "lr_schedule": "constant",
    "lockstep": True,
    "lockstep_timeout_ms": 4000,
}


def replica_specs(tolarias: int, tamiyos: int, max_runs: int) -> list[ServiceSpec]:
    """``tolaria-1..n`` and ``tamiyo-1..m`` on free ports, short leases, one torch thread per trainer."""
    lease = ("--lease-ms", str(LEASE_MS))
    specs = [
        ServiceSpec(
            f"tolaria-{i}",
            "esper.tolaria.service",
            free_port(),
            (*lease, "--max-runs", str(max_runs), "--torch-threads", "1"),
        )
        for i in range(1, tolarias + 1)
    ]
    specs += [ServiceSpec(f"tamiyo-{i}", "esper.tamiyo.service", free_port(), lease) for i in range(1, tamiyos + 1)]
    return specs


def consumer_of(stack: Stack, name: str) -> str:
    """The consumer name :class:`Stack` gives a service (``<name>-<port>``)."""
    return f"{name}-{stack[name].spec.port}"


def eventually(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    value: T | None = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {timeout_s:.0f}s (last: {value!r})")


class Streams:
    """Reads the stack's streams (whole, by run)."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)

    def close(self) -> None:
        self.redis.close()

    def submit(self, run_id: str, **overrides: Any) -> None:
        """Put a job on the jobs queue, as the control API does."""
        job = TrainingJob(**{**TINY_JOB, **overrides})
        self.redis.xadd(streams.CONTROL_JOBS, {_FIELD: encode(Envelope(payload=job, run_id=run_id))})

    def envelopes(self, stream: str, run_id: str | None = None) -> list[Envelope[Message]]:
        out = []
        for _, fields in self.redis.xrange(stream):
            try:
                envelope = decode(fields[_FIELD])
            except (CodecError, KeyError):
                continue
            if run_id is None or envelope.run_id == run_id:
                out.append(envelope)
        return out

    def epochs(self, run_id: str) -> list[int]:
        return [
            e.payload.epoch
            for e in self.envelopes(streams.TELEMETRY_TRAINING, run_id)
            if e.message_type == "training_signals"
        ]

    def finished(self, run_id: str) -> TelemetryEvent | None:
        for e in self.envelopes(streams.TELEMETRY_EVENTS, run_id):
            if isinstance(e.payload, TelemetryEvent) and e.payload.kind == "run_finished":
                return e.payload
        return None

    def results(self, run_id: str) -> list[CommandResult]:
        return [
            e.payload for e in self.envelopes(streams.CONTROL_RESULTS, run_id) if isinstance(e.payload, CommandResult)
        ]

    def command_ids(self, run_id: str) -> list[str]:
        return [e.payload.command_id for e in self.envelopes(streams.CONTROL_COMMANDS, run_id)]  # type: ignore[attr-defined]

    def applied(self, run_id: str) -> Counter[str]:
        """APPLIED results per command, counted by message id: the at-least-once bus may carry one result
        twice under one id (Tolaria republishes a boundary's sealed results on resume), which is one
        application, not two."""
        ids = {
            (e.payload.command_id, e.message_id)
            for e in self.envelopes(streams.CONTROL_RESULTS, run_id)
            if isinstance(e.payload, CommandResult) and e.payload.status is CommandStatus.APPLIED
        }
        return Counter(command_id for command_id, _ in ids)

    def owner(self, group: str, run_id: str) -> str | None:
        value = self.redis.get(f"{streams.OWNERSHIP_PREFIX}:{group}:lease:{run_id}")
        return None if value is None else value.decode()

    def readers(self, group: str, lane: str, run_id: str) -> set[str]:
        """Consumers of ``group`` that ever read the run's routed ``lane`` stream: the replicas that owned it."""
        stream = streams.routed_stream(group, lane, run_id)
        return {
            c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            for c in self.redis.xinfo_consumers(stream, group)
        }


def applied_by_replica(stack: Stack, names: list[str]) -> dict[str, float]:
    """``esper_tolaria_commands_total{status="applied"}`` summed over actions, per live Tolaria."""
    out = {}
    for name in names:
        text = httpx.get(f"{stack[name].url}/metrics", timeout=5.0).text
        out[name] = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "esper_tolaria_commands_total" and s.labels.get("status") == "applied"
        )
    return out
