"""Driving the real stack from a test: submit runs through the API, read what happened from the streams."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from esper.cli.follow import RunFeed
from esper.cli.stack import Stack
from esper.leyline import CommandResult, Envelope, Message, TelemetryEvent, TrainingSignals, decode, streams
from esper.leyline.codec import CodecError

TOKEN = "stack-test-token"
RUN_FINISHED = "run_finished"
#: A short, reproducible job: a learning rate so small that validation plateaus at once, so the
#: heuristic germinates within a few epochs (the default rate keeps improving for longer than a test).
QUICK_JOB: dict[str, Any] = {
    "task": "mnist1d",
    "policy": "heuristic",
    "epochs": 8,
    "max_train_samples": 600,
    "lr": 0.0003,
    "lr_schedule": "constant",
    "lockstep": True,
    "lockstep_timeout_ms": 5000,
}
_FIELD = streams.ENVELOPE_FIELD.encode()
T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, AssertionError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached in {timeout_s:.0f}s (last: {last!r})")


class StackClient:
    """The control API (with the token) and the streams of the stack under test."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.api = httpx.Client(
            base_url=stack["tamiyo"].url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        )
        self.redis = redis.Redis.from_url(stack.redis_url)

    def __enter__(self) -> StackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()
        self.redis.close()

    def submit(self, name: str, **overrides: Any) -> str:
        """Submit ``QUICK_JOB`` (with ``overrides``) as a run with a fresh id; returns the id."""
        run_id = f"t-{name}-{uuid.uuid4().hex[:8]}"
        response = self.api.post("/runs", json={**QUICK_JOB, **overrides, "run_id": run_id})
        assert response.status_code == 202, response.text
        assert response.json()["run_id"] == run_id
        return run_id

    def messages(self, stream: str, run_id: str) -> list[Envelope[Message]]:
        """Every decodable envelope of ``run_id`` on ``stream``, in stream order."""
        out = []
        for _, fields in self.redis.xrange(stream):
            try:
                envelope = decode(fields[_FIELD])
            except (CodecError, KeyError):
                continue
            if envelope.run_id == run_id:
                out.append(envelope)
        return out

    def epochs(self, run_id: str) -> list[int]:
        """Epoch numbers of the TrainingSignals Tolaria published for ``run_id``, in order."""
        return [
            e.payload.epoch
            for e in self.messages(streams.TELEMETRY_TRAINING, run_id)
            if isinstance(e.payload, TrainingSignals)
        ]

    def results(self, run_id: str) -> list[CommandResult]:
        return [
            e.payload for e in self.messages(streams.CONTROL_RESULTS, run_id) if isinstance(e.payload, CommandResult)
        ]

    def wait_epoch(self, run_id: str, epoch: int, timeout_s: float = 60.0) -> int:
        """Wait until Tolaria has published signals for ``epoch`` or later; returns the latest epoch."""
        return eventually(
            lambda: max(self.epochs(run_id), default=-1) if max(self.epochs(run_id), default=-1) >= epoch else None,
            timeout_s,
            f"run {run_id} reaching epoch {epoch}",
        )

    def wait_finished(self, run_id: str, timeout_s: float = 120.0) -> TelemetryEvent:
        """Wait for Tolaria's ``run_finished`` event of ``run_id``."""
        feed = RunFeed(self.redis, run_id, names=(streams.TELEMETRY_EVENTS,))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, envelope in feed.poll(block_ms=500):
                if isinstance(envelope.payload, TelemetryEvent) and envelope.payload.kind == RUN_FINISHED:
                    return envelope.payload
            for name in self.stack.failed:
                raise AssertionError(f"{name} kept dying:\n{self.stack[name].log_tail()}")
        logs = "\n".join(f"--- {n}\n{s.log_tail(1500)}" for n, s in self.stack.services.items())
        raise AssertionError(f"run {run_id} did not finish in {timeout_s:.0f}s\n{logs}")

    def status(self, run_id: str) -> dict[str, Any]:
        response = self.api.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def scrape(self, service: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``/metrics`` of ``service`` as (sample name, labels) -> value."""
        text = httpx.get(f"{self.stack[service].url}/metrics", timeout=5.0).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
