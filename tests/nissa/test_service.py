"""The Nissa service as a real process on a real Redis: metrics over HTTP, files on disk, poison to the DLQ."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

from esper.cli.redis_local import free_port
from esper.cli.stack import ServiceSpec, Stack
from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DeadLetter,
    DecisionAction,
    Envelope,
    LayerHealth,
    Message,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
    decode,
    streams,
)
from esper.oona import RedisBus

from . import scenario

pytestmark = pytest.mark.slow


def publish(url: str, stream: str, envelopes: list[Envelope[Message]]) -> None:
    async def send() -> None:
        bus = RedisBus.from_url(url)
        try:
            for envelope in envelopes:
                await bus.publish(stream, envelope)
        finally:
            await bus.aclose()

    asyncio.run(send())


def publish_raw(url: str, stream: str, data: bytes) -> None:
    async def send() -> None:
        bus = RedisBus.from_url(url)
        try:
            await bus.publish_raw(stream, data)
        finally:
            await bus.aclose()

    asyncio.run(send())


def stream_for(envelope: Envelope[Message]) -> str:
    """The stream each message type travels on in the real stack."""
    return {
        TrainingSignals: streams.TELEMETRY_TRAINING,
        LayerHealth: streams.TELEMETRY_HEALTH,
        SeedTransition: streams.TELEMETRY_EVENTS,
        TelemetryEvent: streams.TELEMETRY_EVENTS,
        AdaptationCommand: streams.CONTROL_COMMANDS,
        CommandResult: streams.CONTROL_RESULTS,
        AdaptationDecision: streams.CONTROL_DECISIONS,
    }[type(envelope.payload)]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def eventually(check: Callable[[], object], timeout_s: float = 15.0, what: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy (or raise AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, KeyError, FileNotFoundError, httpx.HTTPError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout_s}s (last: {last!r})")


def nissa_stack(redis_url: str, tmp: Path, profile: str = "standard") -> Stack:
    spec = ServiceSpec("nissa", "esper.nissa.service", free_port(), ("--profile", profile))
    return Stack([spec], redis_url=redis_url, runs_dir=tmp / "runs", logs_dir=tmp / "logs")


@pytest.fixture(scope="module")
def nissa(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(redis_url).flushdb()
    stack = nissa_stack(redis_url, tmp_path_factory.mktemp("nissa-service")).start()
    try:
        stack.wait_ready(timeout_s=30)
        yield stack
    finally:
        stack.stop()


def test_published_run_shows_in_metrics_archive_and_narrative(nissa: Stack, redis_url: str) -> None:
    url = nissa["nissa"].url
    for envelope in scenario.run_a():
        publish(redis_url, stream_for(envelope), [envelope])

    def metrics_seen() -> bool:
        m = scrape(url)
        return (
            m[("esper_decisions_total", frozenset({("run_id", "run-a"), ("action", DecisionAction.GERMINATE.value)}))]
            == 1.0
        )

    eventually(metrics_seen, what="GERMINATE decision counted in /metrics")
    m = scrape(url)
    assert m[("esper_val_accuracy", frozenset({("run_id", "run-a")}))] == pytest.approx(0.7)
    assert m[("esper_epoch", frozenset({("run_id", "run-a")}))] == 5.0
    labels = frozenset(
        {("run_id", "run-a"), ("action", CommandAction.GERMINATE.value), ("status", CommandStatus.APPLIED.value)}
    )
    assert m[("esper_commands_total", labels)] == 1.0
    # Oona's bus metrics come from the process-wide registry, served on the same page.
    consumed = frozenset({("stream", streams.TELEMETRY_TRAINING), ("group", streams.GROUP_NISSA)})
    assert m[("esper_oona_consumed_total", consumed)] >= 5.0

    run_dir = nissa.runs_dir / "nissa" / "run-a"
    eventually(lambda: (run_dir / "narrative.md").exists(), what="narrative file")
    narrative = (run_dir / "narrative.md").read_text()
    assert "germinate conv_light in s2" in narrative
    assert "rejected by the safety monitor" in narrative
    archived = [line for line in (run_dir / "events.jsonl").read_text().splitlines() if line]
    assert any(AdaptationDecision.message_type in line for line in archived)
    # Tolaria's own report folder for the run is untouched by Nissa.
    assert not (nissa.runs_dir / "run-a" / "events.jsonl").exists()


def test_poison_entry_is_dead_lettered_and_nissa_keeps_consuming(nissa: Stack, redis_url: str) -> None:
    url = nissa["nissa"].url
    publish_raw(redis_url, streams.TELEMETRY_TRAINING, os.urandom(64))
    client = redis.Redis.from_url(redis_url)

    def dead_letter() -> DeadLetter | None:
        for _, fields in client.xrange(streams.DEAD_LETTER):
            letter = decode(fields[streams.ENVELOPE_FIELD.encode()]).payload
            if isinstance(letter, DeadLetter) and letter.group == streams.GROUP_NISSA:
                return letter
        return None

    letter = eventually(dead_letter, what="a dead letter from group nissa")
    assert isinstance(letter, DeadLetter) and letter.stream == streams.TELEMETRY_TRAINING
    for envelope in scenario.run_b():
        publish(redis_url, stream_for(envelope), [envelope])
    labels = frozenset(
        {("run_id", "run-b"), ("action", CommandAction.FOSSILIZE.value), ("status", CommandStatus.REJECTED.value)}
    )
    eventually(lambda: scrape(url).get(("esper_commands_total", labels)) == 1.0, what="run-b after the poison")
    assert nissa["nissa"].alive
    assert nissa["nissa"].restarts == 0


def test_sigterm_stops_nissa_cleanly(redis_url: str, tmp_path: Path) -> None:
    stack = nissa_stack(redis_url, tmp_path).start(supervise=False)
    try:
        stack.wait_ready(timeout_s=30)
        service = stack["nissa"]
        service.signal(signal.SIGTERM)
        assert service.process is not None and service.process.wait(timeout=20) == 0
    finally:
        stack.stop()


def test_minimal_profile_archives_lifecycle_only_and_writes_no_narrative(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    # Its own Redis: in the session's, the module's Nissa would share the group and take half the entries.
    redis_url = redis_server_factory().url
    stack = nissa_stack(redis_url, tmp_path, profile="minimal").start()
    run = f"run-min-{os.getpid()}"
    try:
        stack.wait_ready(timeout_s=30)
        envelopes = [scenario.wire(e.payload, run, e.produced_at) for e in scenario.run_a()]
        for envelope in envelopes:
            publish(redis_url, stream_for(envelope), [envelope])
        archive = stack.runs_dir / "nissa" / run / "events.jsonl"
        eventually(lambda: TelemetryEvent.message_type in archive.read_text(), what="lifecycle events archived")
        text = archive.read_text()
        assert TrainingSignals.message_type not in text and AdaptationDecision.message_type not in text
        assert not (stack.runs_dir / "nissa" / run / "narrative.md").exists()
    finally:
        stack.stop()


def test_unknown_profile_is_refused_naming_the_value(redis_url: str, tmp_path: Path) -> None:
    stack = nissa_stack(redis_url, tmp_path, profile="verbose").start(supervise=False)
    try:
        service = stack["nissa"]
        assert service.process is not None and service.process.wait(timeout=30) != 0
        assert "'verbose'" in service.log_tail() and "minimal" in service.log_tail()
    finally:
        stack.stop()
