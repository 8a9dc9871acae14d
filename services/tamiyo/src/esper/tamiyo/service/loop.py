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

Step 2 and the commands are :func:`esper.tamiyo.decide.decide_boundary` (one
decision per slot at most, in order), the same step ``esper train`` runs in
process. Policy command ids are deterministic
(:func:`~esper.tamiyo.decide.command_id`): an epoch redelivered after a crash
yields the same id, and Tolaria answers DUPLICATE instead of applying it twice.
A run's :class:`ModelGraph` (on the training stream, before the epochs it
describes) is kept with the run: the policy and the monitor price from it.

Replicas share runs (:class:`RunShards`, the same ownership mechanism as
Tolaria's, :mod:`esper.oona.ownership`): one router copies the consumed
streams, in order, onto one stream per run; each run is adopted by one replica
(rendezvous hashing over the live replicas) holding its lease, which reads the
run's stream with concurrency 1 and loads the run's newest saved state first.
A dead replica's leases expire and its runs are adopted by the others, who
take over what it held unacked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

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
from esper.oona import Bus, ConsumerOptions, Delivery, RedisBus
from esper.oona.ownership import Lane, Leases, OwnedRuns, RunRouter
from esper.tamiyo.collector import KEY_PREFIX, HealthCollector, RunState
from esper.tamiyo.decide import decide_boundary
from esper.tamiyo.safety import SafetyMonitor
from esper.tamiyo.service.kernels import KernelPrefetch
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
#: The lane of a run's routed stream: every consumed stream, in the router's order.
TELEMETRY_LANE = "telemetry"
#: How long a replica's lease on a run outlives its last renewal (a dead replica's runs move after this).
DEFAULT_LEASE_MS = 5_000
#: How often a replica looks for runs without an owner (a new run waits at most this for its owner).
SCAN_EVERY_S = 0.25


class DecisionLoop:
    """Handles every envelope Tamiyo consumes (see the module docstring)."""

    def __init__(
        self,
        collector: HealthCollector,
        safety: SafetyMonitor,
        bus: Bus,
        metrics: TamiyoMetrics | None = None,
        kernels: KernelPrefetch | None = None,
    ) -> None:
        self.collector = collector
        self.safety = safety
        self.bus = bus
        self.metrics = metrics or TamiyoMetrics()
        #: asks Tezzeret for a graph's kernels ahead of need (None: no Urza configured)
        self.kernels = kernels
        #: Called with a run's id once its end is recorded (RunShards lets the run go then).
        self.on_run_ended: Callable[[str], None] | None = None

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
            if self.kernels is not None:
                self.kernels.schedule(payload, envelope.run_id)
        elif isinstance(payload, LayerHealth):
            run = self.collector.get(envelope.run_id)
            if run is not None and (run.health is None or payload.epoch >= run.health.epoch):
                run.health = payload
        elif isinstance(payload, TelemetryEvent) and payload.kind == EventKind.RUN_FINISHED:
            await self.on_finished(envelope.run_id, payload)
        self._count_runs()

    async def adopt(self, run_id: str) -> None:
        """This replica decides ``run_id`` from now on: take its newest saved state (another replica may have
        decided on it since this one last saw it) and build its policy before its next message.

        A run this replica already holds is updated in place under its lock, so an operator's pause or
        policy switch in flight on this replica (which holds the lock until it has saved) is read back
        with the rest, never overwritten by the state saved before it.
        """
        store = self.collector.store
        if store is None:
            return
        held = self.collector.get(run_id)
        if held is None:
            saved = await self._saved(run_id)
            if saved is None or self.collector.get(run_id) is not None:
                return  # nothing saved, or registered here (by the API) meanwhile: that state is newer
            self.collector.runs[run_id] = saved
            await self.collector.policy_for(saved)
            log.info("tamiyo: adopted run %s at decided epoch %d", run_id, saved.last_decided_epoch)
            return
        async with held.lock:
            saved = await self._saved(run_id)
            if saved is None:
                return
            self.collector.take_over(held, saved)
            await self.collector.policy_for(held)
        log.info("tamiyo: adopted run %s at decided epoch %d", run_id, held.last_decided_epoch)

    async def _saved(self, run_id: str) -> RunState | None:
        """``run_id``'s state as saved in Redis (None when absent or unreadable, logged)."""
        assert self.collector.store is not None
        raw = await self.collector.store.client.get(KEY_PREFIX + run_id)
        if raw is None:
            return None
        try:
            return RunState.from_dict(msgspec.json.decode(raw))
        except (KeyError, TypeError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("tamiyo: unreadable saved state of run %s: %s", run_id, exc)
            return None

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
                boundary = decide_boundary(
                    policy, signals, run.snapshot(), self.safety, graph=run.graph, health=run.health
                )
                self.metrics.policy_seconds.observe(time.perf_counter() - started)
                for decided in boundary:
                    if not decided.verdict.accepted:
                        self.metrics.rejections.labels(decided.verdict.category).inc()
                    if decided.command is not None:
                        await self.bus.publish(
                            ls.CONTROL_COMMANDS,
                            Envelope(payload=decided.command, run_id=run.run_id, trace_id=envelope.trace_id),
                        )
                    await self.bus.publish(
                        ls.CONTROL_DECISIONS,
                        Envelope(payload=decided.decision, run_id=run.run_id, trace_id=envelope.trace_id),
                    )
            except Exception:
                # The epoch will be delivered again: the policy must see it as if for the first time.
                policy.load_state_dict(before)
                raise
            self.metrics.decision_latency.observe(time.perf_counter() - received)
            for decided in boundary:
                self.metrics.decisions.labels(decided.decision.action.value, decided.decision.policy).inc()
                self.collector.record(run, decided.decision)
            run.last_decided_epoch = signals.epoch
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
        if self.on_run_ended is not None:
            self.on_run_ended(run_id)

    def _count_runs(self) -> None:
        counts = {"active": 0, "paused": 0, "stopped": 0, "finished": 0}
        for run in self.collector.runs.values():
            state = "finished" if run.finished else "stopped" if run.stopped else "paused" if run.paused else "active"
            counts[state] += 1
        for state, n in counts.items():
            self.metrics.runs.labels(state).set(n)


class RunShards:
    """This replica's share of the runs: the router (when it holds the router lease), its owned runs' leases and
    consumers, and the scan that adopts runs without an owner (see the module docstring)."""

    def __init__(
        self,
        loop: DecisionLoop,
        bus: RedisBus,
        consumer: str,
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
        scan_every_s: float = SCAN_EVERY_S,
    ) -> None:
        self.leases = Leases.on(bus, ls.GROUP_TAMIYO, consumer, lease_ms)
        lane = Lane(TELEMETRY_LANE, CONSUMED_STREAMS, loop.handle, ConsumerOptions())
        self.router = RunRouter(bus, self.leases, [lane], index=True)
        self.owned = OwnedRuns(bus, self.leases, [lane], on_adopt=loop.adopt)
        self.scan_every_s = scan_every_s
        self._letting_go: set[asyncio.Task[None]] = set()
        loop.on_run_ended = self._ended

    def _ended(self, run_id: str) -> None:
        """A finished run's consumer is let go (not from inside its own handler, and only after a grace period
        for its trailing messages); a message that comes later has the run adopted again."""

        async def let_go() -> None:
            await asyncio.sleep(2 * self.leases.ttl_ms / 1000.0)
            await self.owned.release(run_id)
            await self.leases.unindex(run_id)

        task = asyncio.create_task(let_go())
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    async def run(self) -> None:
        """Route, renew and adopt until :meth:`stop`."""
        await asyncio.gather(self.router.run(), self.owned.keep(), self.owned.scan(self.scan_every_s))

    async def stop(self) -> None:
        """Stop routing and consuming; release the leases so the other replicas adopt the runs at once."""
        for task in list(self._letting_go):
            task.cancel()
        await self.router.stop()
        await self.owned.close()
