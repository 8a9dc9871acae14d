"""Driving the Tolaria service from a test: the service in-process or as a process, and the bus as Tamiyo sees it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port  # tests/ is on sys.path (tests/conftest.py)

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    DecisionAction,
    Envelope,
    Message,
    TelemetryEvent,
    TrainingJob,
    TrainingSignals,
    decode,
    encode,
    streams,
)
from esper.oona import RedisBus
from esper.tolaria.service.app import TolariaService
from esper.tolaria.service.metrics import TolariaMetrics

M = TypeVar("M", bound=Message)
#: Small enough that an epoch takes a fraction of a second on a shared CPU.
#: No Tamiyo runs in these tests: jobs do not wait for decisions (lockstep is the default otherwise).
TINY = {"max_train_samples": 400, "batch_size": 100, "lockstep": False}
#: The service's entry point with a crash point (see the script).
CRASHPOINT = Path(__file__).with_name("crashpoint.py")


def wait_until(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.05)


class Bus:
    """The streams as another service sees them (synchronous redis-py and the Leyline codec)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def publish(self, stream: str, run_id: str, message: Message) -> None:
        self.client.xadd(stream, {streams.ENVELOPE_FIELD: encode(Envelope(payload=message, run_id=run_id))})

    def submit(self, run_id: str, **fields: Any) -> TrainingJob:
        job = TrainingJob(**{**TINY, **fields})
        self.publish(streams.CONTROL_JOBS, run_id, job)
        return job

    def command(self, run_id: str, command_id: str, action: CommandAction, **fields: Any) -> AdaptationCommand:
        command = AdaptationCommand(command_id=command_id, action=action, issued_by="test", **fields)
        self.publish(streams.CONTROL_COMMANDS, run_id, command)
        return command

    def envelopes(self, stream: str, run_id: str | None = None) -> list[Envelope[Message]]:
        out = [decode(fields[streams.ENVELOPE_FIELD.encode()]) for _, fields in self.client.xrange(stream)]
        return [e for e in out if run_id is None or e.run_id == run_id]

    def messages(self, stream: str, run_id: str, kind: type[M]) -> list[M]:
        return [e.payload for e in self.envelopes(stream, run_id) if isinstance(e.payload, kind)]

    def signals(self, run_id: str) -> list[TrainingSignals]:
        return self.messages(streams.TELEMETRY_TRAINING, run_id, TrainingSignals)

    def results(self, run_id: str) -> list[CommandResult]:
        return self.messages(streams.CONTROL_RESULTS, run_id, CommandResult)

    def result_of(self, run_id: str, command_id: str) -> list[CommandResult]:
        return [r for r in self.results(run_id) if r.command_id == command_id]

    def events(self, run_id: str, kind: str) -> list[TelemetryEvent]:
        found = self.messages(streams.TELEMETRY_EVENTS, run_id, TelemetryEvent)
        return [e for e in found if e.kind == kind]

    def wait_finished(self, run_id: str, timeout_s: float = 120.0) -> TelemetryEvent:
        found = wait_until(lambda: self.events(run_id, "run_finished"), timeout_s, f"run {run_id} to finish")
        return found[0]

    def pending(self, stream: str) -> int:
        try:
            return int(self.client.xpending(stream, streams.GROUP_TOLARIA)["pending"])
        except redis.ResponseError:
            return 0

    def close(self) -> None:
        self.client.close()


class ScriptedTamiyo:
    """Plays Tamiyo for one run: on each epoch's signals, publishes each of that epoch's planned commands
    followed by its decision (index ``i`` of ``count``, ids after the first ``.<i>``; one WAIT when none), as
    the real decision loop does."""

    def __init__(
        self,
        bus: Bus,
        run_id: str,
        plan: dict[int, Iterable[AdaptationCommand]] | None = None,
        withhold: frozenset[str] = frozenset(),
    ) -> None:
        self.bus, self.run_id, self.withhold = bus, run_id, withhold
        self.plan = {epoch: list(commands) for epoch, commands in (plan or {}).items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.decided: list[int] = []
        #: when each epoch's decisions were published (time.monotonic())
        self.decided_at: dict[int, float] = {}

    def __enter__(self) -> ScriptedTamiyo:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for signals in self.bus.signals(self.run_id):
                if signals.epoch in self.decided:
                    continue
                self.decide(signals.epoch)
            time.sleep(0.02)

    def decide(self, epoch: int) -> None:
        commands = self.plan.get(epoch, [])
        if not commands:
            wait = AdaptationDecision(
                decision_id=f"scripted-e{epoch}", epoch=epoch, action=DecisionAction.WAIT, reason="", confidence=1.0
            )
            self.bus.publish(streams.CONTROL_DECISIONS, self.run_id, wait)
        for index, command in enumerate(commands):
            if command.command_id not in self.withhold:  # a withheld command is lost on its way
                self.bus.publish(streams.CONTROL_COMMANDS, self.run_id, command)
            decision = AdaptationDecision(
                decision_id=f"scripted-e{epoch}" + (f".{index}" if index else ""),
                epoch=epoch,
                action=DecisionAction(command.action.value),
                reason="scripted by the test",
                confidence=1.0,
                slot_id=command.slot_id,
                blueprint=command.blueprint,
                blueprint_config=dict(command.blueprint_config),
                policy="scripted",
                command_id=command.command_id,
                index=index,
                count=len(commands),
            )
            self.bus.publish(streams.CONTROL_DECISIONS, self.run_id, decision)
        self.decided_at[epoch] = time.monotonic()
        self.decided.append(epoch)


class InProcessTolaria:
    """:class:`TolariaService` on its own event loop in a thread (no HTTP server), for fast tests."""

    def __init__(self, redis_url: str, runs_dir: Path, consumer: str = "tolaria-test") -> None:
        self.redis_url, self.runs_dir, self.consumer = redis_url, runs_dir, consumer
        self.loop = asyncio.new_event_loop()
        self.metrics = TolariaMetrics()
        self.service: TolariaService | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._task: asyncio.Task[None] | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.service = TolariaService(
            RedisBus.from_url(self.redis_url), self.runs_dir, self.consumer, metrics=self.metrics
        )
        self._task = self.loop.create_task(self.service.run())
        self.loop.run_forever()

    def start(self) -> InProcessTolaria:
        self._thread.start()
        wait_until(lambda: self.service is not None and self.service.not_ready() is None, 30, "tolaria ready")
        return self

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample of the service's metrics, as ``/metrics`` would show it."""
        return self.metrics.registry.get_sample_value(name, labels)

    async def _shutdown(self) -> None:
        assert self.service is not None
        await self.service.stop()
        assert self._task is not None
        await self._task  # re-raises what ended the service's loop

    def stop(self) -> None:
        """Stop as SIGTERM would (the run is interrupted at its next boundary); re-raises a service failure."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


class TolariaProcess:
    """The service as a subprocess with a fixed consumer name, so a restart is the same consumer."""

    def __init__(self, redis_url: str, runs_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.flags = [
            "--redis-url",
            redis_url,
            "--port",
            str(self.port),
            "--runs-dir",
            str(runs_dir),
            "--consumer",
            "tolaria-proc",
            "--torch-threads",
            "1",
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, crash: str | None = None) -> TolariaProcess:
        """Start the service; with ``crash`` (``<point>:<command_id>``, see ``crashpoint.py``) it SIGKILLs itself
        at that point of the boundary that applies the command."""
        if crash is None:
            command, env = [sys.executable, "-m", "esper.tolaria.service", *self.flags], None
        else:
            command = [sys.executable, str(CRASHPOINT), *self.flags]
            env = {**os.environ, "ESPER_TEST_CRASH": crash}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(self.ready, 60, f"tolaria ready (log: {self.log_path})")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_crashed(self, timeout_s: float = 120.0) -> None:
        """Wait for the process to die of its own crash point (SIGKILL)."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout_s)
        assert code == -signal.SIGKILL, f"exited with {code}, not by its crash point:\n{self.log_path.read_text()}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out
