"""The decision loop: telemetry in, policy, safety monitor, command and decision out.

One Oona consumer (group ``tamiyo``, concurrency 1, so each run's epochs are
handled in order) reads the jobs, training, health, events and results streams
and hands each envelope to :meth:`DecisionLoop.handle`. For an epoch's
:class:`TrainingSignals`:

1. the collector notes the slot states and says whether to decide at all
   (redelivered epoch, paused, stopped or finished run: no decision);
2. the run's policy decides; the :class:`SafetyMonitor` validates;
3. an accepted, actionable decision is published as an :class:`AdaptationCommand`
   on ``CONTROL_COMMANDS`` first, then the decision (WAIT and rejected ones
   too) on ``CONTROL_DECISIONS``;
4. the run's state is saved to Redis; the handler returns and Oona acks.

Step 2 and the command are :func:`esper.tamiyo.decide.decide`, the same step
``esper train`` runs in process. Policy command ids are deterministic
(:func:`~esper.tamiyo.decide.command_id`): an epoch redelivered after a crash
yields the same id, and Tolaria answers DUPLICATE instead of applying it twice.
A run's :class:`ModelGraph` (on the training stream, before the epochs it
describes) is kept with the run: the policy and the monitor price from it.
"""

from __future__ import annotations

import logging
import time

from esper.leyline import (
    CommandAction,
    CommandResult,
    CommandStatus,
    Envelope,
    EventKind,
    LayerHealth,
    Message,
    ModelGraph,
    TelemetryEvent,
    TrainingJob,
    TrainingSignals,
)
from esper.leyline import streams as ls
from esper.oona import Bus, Delivery
from esper.tamiyo.collector import HealthCollector, RunState
from esper.tamiyo.decide import decide
from esper.tamiyo.safety import SafetyMonitor
from esper.tamiyo.service.metrics import TamiyoMetrics

log = logging.getLogger(__name__)

#: The streams Tamiyo consumes, jobs first: a job read in the same batch as its run's
#: first epoch is registered before that epoch is decided.
CONSUMED_STREAMS = (
    ls.CONTROL_JOBS,
    ls.TELEMETRY_TRAINING,
    ls.TELEMETRY_HEALTH,
    ls.TELEMETRY_EVENTS,
    ls.CONTROL_RESULTS,
)


class DecisionLoop:
    """Handles every envelope Tamiyo consumes (see the module docstring)."""

    def __init__(
        self, collector: HealthCollector, safety: SafetyMonitor, bus: Bus, metrics: TamiyoMetrics | None = None
    ) -> None:
        self.collector = collector
        self.safety = safety
        self.bus = bus
        self.metrics = metrics or TamiyoMetrics()

    async def handle(self, envelope: Envelope[Message], delivery: Delivery | None = None) -> None:
        """Dispatch by message type; other types on these streams are ignored."""
        payload = envelope.payload
        if isinstance(payload, TrainingSignals):
            await self.on_signals(envelope, payload)
        elif isinstance(payload, TrainingJob):
            await self.on_job(envelope.run_id, payload)
        elif isinstance(payload, CommandResult):
            await self.on_result(envelope.run_id, payload)
        elif isinstance(payload, ModelGraph):
            self._run_for(envelope.run_id).observe_graph(payload)
        elif isinstance(payload, LayerHealth):
            run = self.collector.get(envelope.run_id)
            if run is not None and (run.health is None or payload.epoch >= run.health.epoch):
                run.health = payload
        elif isinstance(payload, TelemetryEvent) and payload.kind == EventKind.RUN_FINISHED:
            await self.on_finished(envelope.run_id, payload)
        self._count_runs()

    def _run_for(self, run_id: str) -> RunState:
        run = self.collector.get(run_id)
        if run is None:
            # Telemetry of a run whose job Tamiyo never saw (the jobs stream was trimmed): steer
            # it with the default job rather than leave it blind.
            log.warning("tamiyo: telemetry for unregistered run %s; registering it with the default job", run_id)
            run, _ = self.collector.register(run_id, TrainingJob())
        return run

    async def on_job(self, run_id: str, job: TrainingJob) -> None:
        """Register a run submitted through the jobs stream (a known run is left as it is)."""
        try:
            run, created = self.collector.register(run_id, job)
        except ValueError as exc:
            log.error("tamiyo: job for run %s not steerable: %s", run_id, exc)
            return
        if created:
            log.info("tamiyo: run %s registered (task %s, policy %s)", run_id, job.task, run.policy_name)
            await self.collector.save(run)

    async def on_signals(self, envelope: Envelope[Message], signals: TrainingSignals) -> None:
        """Decide on one epoch (see the module docstring)."""
        received = time.perf_counter()
        run = self._run_for(envelope.run_id)
        async with run.lock:
            self.collector.observe_signals(run, signals, envelope.produced_at)
            policy = await self.collector.policy_for(run)
            skip = self.collector.skip_reason(run, signals)
            if skip is not None or policy is None:
                why, detail = skip or ("no_policy", str(run.error))
                self.metrics.skipped.labels(why).inc()
                log.info("tamiyo: run %s epoch %d not decided: %s", run.run_id, signals.epoch, detail)
                return
            before = policy.state_dict()
            try:
                started = time.perf_counter()
                decided = decide(policy, signals, run.snapshot(), self.safety, graph=run.graph, health=run.health)
                self.metrics.policy_seconds.observe(time.perf_counter() - started)
                decision, command = decided.decision, decided.command
                if not decided.verdict.accepted:
                    self.metrics.rejections.labels(decided.verdict.category).inc()
                if command is not None:
                    await self.bus.publish(
                        ls.CONTROL_COMMANDS, Envelope(payload=command, run_id=run.run_id, trace_id=envelope.trace_id)
                    )
                await self.bus.publish(
                    ls.CONTROL_DECISIONS, Envelope(payload=decision, run_id=run.run_id, trace_id=envelope.trace_id)
                )
            except Exception:
                # The epoch will be delivered again: the policy must see it as if for the first time.
                policy.load_state_dict(before)
                raise
            self.metrics.decision_latency.observe(time.perf_counter() - received)
            self.metrics.decisions.labels(decision.action.value, decision.policy).inc()
            run.last_decided_epoch = signals.epoch
            self.collector.record(run, decision)
            await self.collector.save(run)

    async def on_result(self, run_id: str, result: CommandResult) -> None:
        """Tolaria's answer: attach it to the decision and follow run control that took effect."""
        run = self.collector.get(run_id)
        if run is None:
            return
        async with run.lock:
            self.collector.apply_result(run, result)
            if result.status is CommandStatus.APPLIED:
                if result.action is CommandAction.STOP:
                    run.stopped = True
                elif result.action is CommandAction.PAUSE:
                    run.paused = True
                elif result.action is CommandAction.RESUME:
                    run.paused = False
            await self.collector.save(run)

    async def on_finished(self, run_id: str, event: TelemetryEvent) -> None:
        run = self.collector.get(run_id)
        if run is None:
            return
        async with run.lock:
            run.finished = True
            run.outcome = {k: v for k, v in event.attributes.items() if v is not None}
            await self.collector.save(run)

    def _count_runs(self) -> None:
        counts = {"active": 0, "paused": 0, "stopped": 0, "finished": 0}
        for run in self.collector.runs.values():
            state = "finished" if run.finished else "stopped" if run.stopped else "paused" if run.paused else "active"
            counts[state] += 1
        for state, n in counts.items():
            self.metrics.runs.labels(state).set(n)
