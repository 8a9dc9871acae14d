"""The health collector: Tamiyo's memory of every run it steers.

Per run it keeps the job, the policy instance (whose tracker holds the signal
history), the newest telemetry and slot states, the last decided epoch,
paused/stopped/finished flags and a ring buffer of recent decisions with their
outcomes. Telemetry is fed in stream order; an epoch at or below the last
decided one is a redelivery and is skipped, so a policy never sees an epoch
twice. After each decision the state is written to Redis
(``esper:tamiyo:run:<run_id>``, JSON), so a restarted Tamiyo continues where
the last one stopped.

A run's structure (its slots, their shapes and what each blueprint costs
there) comes only from the :class:`ModelGraph` Tolaria publishes; the newest
one is kept (and saved) with the run. Building a run's policy may be slow (a
learned policy loads its network), so it happens in a worker thread as soon as
the run is registered, long before its first epoch arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import msgspec
import redis.asyncio as aioredis

from esper.leyline import (
    AdaptationDecision,
    CommandResult,
    CommandStatus,
    LayerHealth,
    ModelGraph,
    SeedStateReport,
    TrainingJob,
    TrainingSignals,
)
from esper.oona import connect
from esper.tamiyo.decide import run_snapshot
from esper.tamiyo.policies import POLICIES, make_policy
from esper.tamiyo.policy import Policy
from esper.tamiyo.safety import RunSnapshot

log = logging.getLogger(__name__)

KEY_PREFIX = "esper:tamiyo:run:"
INDEX_KEY = "esper:tamiyo:runs"
#: decisions kept per run for the status API
RECENT_DECISIONS = 50


#: Builds a fresh policy called ``name`` for a job (``esper.tamiyo.policies.make_policy`` by default).
PolicyFactory = Callable[[str, TrainingJob], Policy]


@dataclass(slots=True)
class DecisionRecord:
    """One decision as the status API shows it; ``result`` is Tolaria's answer once it came."""

    epoch: int | None
    action: str
    reason: str
    accepted: bool
    policy: str
    confidence: float | None = None
    slot_id: str | None = None
    blueprint: str | None = None
    rejection_reason: str | None = None
    command_id: str | None = None
    at: float = field(default_factory=time.time)
    result: str | None = None
    result_reason: str | None = None

    @classmethod
    def of(cls, decision: AdaptationDecision) -> DecisionRecord:
        return cls(
            epoch=decision.epoch,
            action=decision.action.value,
            reason=decision.reason,
            accepted=decision.accepted,
            policy=decision.policy,
            confidence=decision.confidence,
            slot_id=decision.slot_id,
            blueprint=decision.blueprint,
            rejection_reason=decision.rejection_reason,
            command_id=decision.command_id,
        )


@dataclass(slots=True)
class RunState:
    """Everything Tamiyo knows about one run. Mutate only under ``lock``."""

    run_id: str
    job: TrainingJob
    policy_name: str
    submitted_at: float = field(default_factory=time.time)
    paused: bool = False
    stopped: bool = False
    finished: bool = False
    last_decided_epoch: int = -1
    signals: TrainingSignals | None = None
    signals_at: float | None = None
    health: LayerHealth | None = None
    graph: ModelGraph | None = None
    decisions: deque[DecisionRecord] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))
    stale_skipped: int = 0
    outcome: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    policy: Policy | None = None
    policy_state: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    prepared: asyncio.Future[None] | None = None

    @property
    def seeds(self) -> dict[str, SeedStateReport]:
        """The slots' states in the newest telemetry, by slot id."""
        return {r.slot_id: r for r in self.signals.seeds} if self.signals else {}

    def snapshot(self) -> RunSnapshot:
        """The read-only view the :class:`~esper.tamiyo.safety.SafetyMonitor` validates against."""
        if self.signals is None:
            return RunSnapshot(run_id=self.run_id, paused=self.paused, param_budget=self.job.param_budget)
        return run_snapshot(
            self.run_id,
            self.signals,
            graph=self.graph,
            telemetry_at=self.signals_at or 0.0,
            param_budget=self.job.param_budget,
            paused=self.paused,
        )

    def observe_graph(self, graph: ModelGraph) -> None:
        """Keep ``graph`` if it is at least as new as the one held (a redelivered older one is ignored)."""
        if self.graph is None or graph.revision >= self.graph.revision:
            self.graph = graph

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (the policy's ``state_dict`` included), for the Redis copy."""
        policy_state = self.policy.state_dict() if self.policy is not None else self.policy_state
        return {
            "run_id": self.run_id,
            "job": self.job.to_dict(),
            "policy_name": self.policy_name,
            "submitted_at": self.submitted_at,
            "paused": self.paused,
            "stopped": self.stopped,
            "finished": self.finished,
            "last_decided_epoch": self.last_decided_epoch,
            "signals": None if self.signals is None else self.signals.to_dict(),
            "signals_at": self.signals_at,
            "graph": None if self.graph is None else self.graph.to_dict(),
            "decisions": [asdict(d) for d in self.decisions],
            "stale_skipped": self.stale_skipped,
            "outcome": self.outcome,
            "policy_state": policy_state,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        signals = data.get("signals")
        graph = data.get("graph")
        run = cls(
            run_id=data["run_id"],
            job=msgspec.convert(data["job"], TrainingJob),
            policy_name=data["policy_name"],
            submitted_at=data["submitted_at"],
            paused=data["paused"],
            stopped=data["stopped"],
            finished=data["finished"],
            last_decided_epoch=data["last_decided_epoch"],
            signals=None if signals is None else msgspec.convert(signals, TrainingSignals),
            signals_at=data["signals_at"],
            graph=None if graph is None else msgspec.convert(graph, ModelGraph),
            stale_skipped=data.get("stale_skipped", 0),
            outcome=dict(data.get("outcome", {})),
            policy_state=data.get("policy_state"),
        )
        run.decisions.extend(DecisionRecord(**d) for d in data.get("decisions", []))
        return run


class RunStore:
    """Run states in Redis: one JSON string per run plus an index set of run ids."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RunStore:
        """A store on ``url`` with Oona's health-checked pool and deadlines (:func:`esper.oona.connect`)."""
        return cls(connect(url))

    async def save(self, state: dict[str, Any]) -> None:
        run_id = state["run_id"]
        pipe = self.client.pipeline(transaction=True)
        pipe.set(KEY_PREFIX + run_id, msgspec.json.encode(state))
        pipe.sadd(INDEX_KEY, run_id)
        await pipe.execute()

    async def delete(self, run_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(KEY_PREFIX + run_id)
        pipe.srem(INDEX_KEY, run_id)
        await pipe.execute()

    async def load_all(self) -> list[dict[str, Any]]:
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in await self.client.smembers(INDEX_KEY))
        if not ids:
            return []
        values = await self.client.mget([KEY_PREFIX + i for i in ids])
        return [msgspec.json.decode(v) for v in values if v is not None]

    async def aclose(self) -> None:
        await self.client.aclose()


class HealthCollector:
    """Per-run state, fed in order, persisted after each decision (see the module docstring)."""

    def __init__(
        self,
        store: RunStore | None = None,
        *,
        policies: Collection[str] = POLICIES,
        policy_factory: PolicyFactory = make_policy,
    ) -> None:
        self.policies = policies
        self.policy_factory = policy_factory
        self.store = store
        self.runs: dict[str, RunState] = {}

    async def restore(self) -> int:
        """Reload every run saved in Redis (a restarted Tamiyo continues); returns how many."""
        if self.store is None:
            return 0
        for data in await self.store.load_all():
            try:
                run = RunState.from_dict(data)
            except (KeyError, TypeError, msgspec.ValidationError) as exc:
                log.error("tamiyo: unreadable saved state of run %r: %s", data.get("run_id"), exc)
                continue
            self.runs[run.run_id] = run
            if not (run.finished or run.stopped):  # ended runs build their policy only if asked
                self._prepare(run)
        return len(self.runs)

    def register(self, run_id: str, job: TrainingJob, *, policy: str | None = None) -> tuple[RunState, bool]:
        """The run called ``run_id``, created (and its policy built in the background) if new.

        Returns ``(run, created)``. A known run keeps its state: a job seen twice
        (the API registered it, then the jobs stream delivered it) is one run.
        """
        run = self.runs.get(run_id)
        if run is not None:
            return run, False
        name = policy or job.policy
        if name not in self.policies:
            raise ValueError(f"field 'policy': unknown policy {name!r} (known: {', '.join(self.policies)})")
        run = self.runs[run_id] = RunState(run_id=run_id, job=job, policy_name=name)
        self._prepare(run)
        return run, True

    def take_over(self, run: RunState, saved: RunState) -> None:
        """Make ``run`` (held, its lock taken by the caller) what ``saved`` says, keeping the object and its
        lock and the newest layer health (not saved); its policy is rebuilt from the saved policy state."""
        if run.prepared is not None:
            run.prepared.cancel()
        for f in fields(RunState):
            if f.name not in ("lock", "prepared", "policy", "health"):
                setattr(run, f.name, getattr(saved, f.name))
        run.policy, run.prepared = None, None
        self._prepare(run)

    def forget(self, run_id: str) -> None:
        """Drop ``run_id`` from memory (a submission that never reached the jobs stream)."""
        run = self.runs.pop(run_id, None)
        if run is not None and run.prepared is not None:
            run.prepared.cancel()

    def get(self, run_id: str) -> RunState | None:
        return self.runs.get(run_id)

    def all(self) -> Iterable[RunState]:
        return sorted(self.runs.values(), key=lambda r: (r.submitted_at, r.run_id))

    def _prepare(self, run: RunState) -> None:
        run.prepared = asyncio.ensure_future(self._build(run))

    async def _build(self, run: RunState) -> None:
        try:
            policy = await asyncio.to_thread(self.policy_factory, run.policy_name, run.job)
            if run.policy_state is not None:
                policy.load_state_dict(run.policy_state)
            run.policy, run.policy_state, run.error = policy, None, None
        except Exception as exc:  # a run whose policy cannot be built must not take the service down
            log.exception("tamiyo: cannot build policy %r for run %s", run.policy_name, run.run_id)
            run.error = f"policy {run.policy_name!r} unavailable: {type(exc).__name__}: {exc}"

    async def policy_for(self, run: RunState) -> Policy | None:
        """The run's policy once built (None with ``run.error`` set when it could not be)."""
        if run.prepared is None:
            self._prepare(run)
        assert run.prepared is not None
        await asyncio.shield(run.prepared)
        return run.policy

    async def switch_policy(self, run: RunState, name: str, policy: Policy | None = None) -> None:
        """Give ``run`` a fresh policy called ``name`` (its tracker starts over); ``policy``: one already built."""
        if name not in self.policies:
            raise ValueError(f"field 'policy': unknown policy {name!r} (known: {', '.join(self.policies)})")
        await self.policy_for(run)
        run.policy_name, run.policy, run.policy_state = name, None, None
        if policy is None:
            self._prepare(run)
            await self.policy_for(run)
        else:
            run.policy, run.error = policy, None
        await self.save(run)

    def skip_reason(self, run: RunState, signals: TrainingSignals) -> tuple[str, str] | None:
        """``(why, detail)`` when ``signals`` must not be decided on, None to decide.

        ``why`` is a short label (``redelivered``, ``stopped``, ``finished``,
        ``paused``, ``no_policy``); a redelivered epoch is counted as stale.
        """
        if signals.epoch <= run.last_decided_epoch:
            run.stale_skipped += 1
            return "redelivered", f"epoch {signals.epoch} already decided (last decided {run.last_decided_epoch})"
        if run.stopped:
            return "stopped", "run stopped by an operator"
        if run.finished:
            return "finished", "run finished"
        if run.paused:
            return "paused", "run paused by an operator"
        if run.error is not None:
            return "no_policy", run.error
        return None

    def observe_signals(self, run: RunState, signals: TrainingSignals, produced_at: float) -> None:
        """Take ``signals`` (produced at ``produced_at``) as the run's newest telemetry."""
        if run.signals is None or signals.epoch >= run.signals.epoch:
            run.signals, run.signals_at = signals, produced_at

    def record(self, run: RunState, decision: AdaptationDecision | DecisionRecord) -> DecisionRecord:
        """Add a decision to the run's recent history (newest last)."""
        record = decision if isinstance(decision, DecisionRecord) else DecisionRecord.of(decision)
        run.decisions.append(record)
        return record

    def apply_result(self, run: RunState, result: CommandResult) -> None:
        """Note Tolaria's answer to a command on the decision that issued it."""
        for record in reversed(run.decisions):
            if record.command_id == result.command_id:
                # A DUPLICATE answer to a redelivered command must not hide the first APPLIED one.
                if record.result is None or result.status is not CommandStatus.DUPLICATE:
                    record.result, record.result_reason = result.status.value, result.reason
                break

    async def save(self, run: RunState) -> None:
        """Write the run's state to Redis (no-op without a store)."""
        if self.store is not None:
            await self.store.save(run.to_dict())
