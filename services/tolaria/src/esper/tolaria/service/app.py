"""The Tolaria service: jobs from a shared queue, commands and decisions routed to the replica that trains the run.

Several Tolaria replicas may run in group ``tolaria``:

* ``CONTROL_JOBS`` is a shared work queue: each replica has ``max_runs`` job
  slots (consumers ``<consumer>``, ``<consumer>.2``, ...). A slot that takes a
  job adopts its run (:class:`esper.oona.ownership.OwnedRuns`: a lease in
  Redis, renewed while the run trains, and the job entry kept held with it),
  runs it (:class:`ServiceRun` in a thread) and returns - so Oona acks the job
  - only once the run has finished and its report is written. A replica that
  dies stops renewing: its lease expires, its job entries go idle, and after
  the job claim timeout an idle slot of another replica claims the job
  (XAUTOCLAIM), adopts the run and resumes it from the last checkpoint in the
  shared run storage (:mod:`esper.tolaria.service.storage`). A replica
  restarted under the same consumer name finds its jobs in its own pending
  list first.
* ``CONTROL_COMMANDS`` and ``CONTROL_DECISIONS`` are read by one router
  (whichever replica holds the router lease) and copied onto the run's own
  streams, which only the run's owner reads: a command is queued for the run's
  next boundary and its handler returns (Oona acks) once it was applied or
  rejected, its result published and the checkpoint written. A command whose
  run is neither owned nor queued is answered REJECTED ("unknown run") by the
  router; one for an ended run "run finished before the command's boundary".
  A new owner takes over the commands the old one held but never acked, so no
  command is lost in a move, and applied ids in the checkpoint make a
  redelivered one DUPLICATE, so none is applied twice. A boundary's results
  reach the bus only once the checkpoint holds it (the outbox journal,
  :mod:`esper.tolaria.service.outbox`): a boundary lost in a crash published
  nothing, so its redone application is the command's only APPLIED result.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import REGISTRY

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    CommandStatus,
    Envelope,
    EventKind,
    Message,
    TelemetryEvent,
    TrainingJob,
)
from esper.leyline import streams as ls
from esper.oona import ConsumerOptions, Delivery, RedisBus, Subscription
from esper.oona.ownership import HeldEntry, Lane, Leases, OwnedRuns, RunRouter
from esper.service import BusReadiness, health_router
from esper.tolaria.service.inbox import CommandInbox, PendingCommand, RunInterrupted, future_settler
from esper.tolaria.service.metrics import TolariaMetrics
from esper.tolaria.service.storage import RunStorage, SharedDirectory
from esper.tolaria.service.worker import JobRejected, RunOutcome, ServiceRun

log = logging.getLogger(__name__)

#: Every restart re-delivers the running job; a run that takes the process down this often is dead-lettered.
JOB_MAX_DELIVERIES = 20
#: How long a run's lease lasts without renewal: a dead replica's runs move after about this (+ the claim).
DEFAULT_LEASE_MS = 10_000
#: Commands wait for their run's boundary while pending: the owner must never claim its own back.
_HELD_FOR_RUN_MS = 24 * 3600 * 1000
COMMANDS_LANE = "commands"
DECISIONS_LANE = "decisions"
FINISHED_BEFORE_BOUNDARY = "run finished before the command's boundary"


def slot_name(consumer: str, slot: int) -> str:
    """The job consumer of slot ``slot`` (0-based); the first keeps the plain name, as one-slot Tolarias had."""
    return consumer if slot == 0 else f"{consumer}.{slot + 1}"


class TolariaService:
    """Tolaria wired to the bus and HTTP: ``run()`` is the background loop, ``stop()`` the shutdown hook."""

    def __init__(
        self,
        bus: RedisBus,
        runs_dir: Path,
        consumer: str,
        *,
        metrics: TolariaMetrics | None = None,
        command_options: ConsumerOptions | None = None,
        max_runs: int = 1,
        lease_ms: int = DEFAULT_LEASE_MS,
        job_claim_ms: int | None = None,
        storage: RunStorage | None = None,
    ) -> None:
        if not isinstance(max_runs, int) or max_runs < 1:
            raise ValueError(f"max_runs must be an integer >= 1, got {max_runs!r}")
        self.bus = bus
        self.runs_dir = Path(runs_dir)
        self.storage: RunStorage = storage or SharedDirectory(self.runs_dir)
        self.consumer_name = consumer
        self.metrics = metrics or TolariaMetrics()
        #: Runs this replica trains (their inboxes), by run id.
        self.inboxes: dict[str, CommandInbox] = {}
        self.leases = Leases.on(bus, ls.GROUP_TOLARIA, consumer, lease_ms)
        # A job's entry is held as long as its lease: it goes idle (claimable) only once the lease is long gone.
        self.job_claim_ms = job_claim_ms if job_claim_ms is not None else 3 * lease_ms
        if self.job_claim_ms <= lease_ms:
            raise ValueError(f"job_claim_ms must exceed lease_ms ({lease_ms}), got {self.job_claim_ms!r}")
        batch = ConsumerOptions().batch_size
        lanes = [
            Lane(
                COMMANDS_LANE,
                (ls.CONTROL_COMMANDS,),
                self.on_command,
                command_options or ConsumerOptions(batch_size=batch, concurrency=batch, claim_idle_ms=_HELD_FOR_RUN_MS),
            ),
            Lane(
                DECISIONS_LANE,
                (ls.CONTROL_DECISIONS,),
                self.on_decision,
                ConsumerOptions(claim_idle_ms=_HELD_FOR_RUN_MS),
            ),
        ]
        self.owned = OwnedRuns(bus, self.leases, lanes, on_lost=self._lost)
        self.router = RunRouter(bus, self.leases, lanes, admit=self._admit, on_refused=self._refused, unless_ended=True)
        job_options = ConsumerOptions(
            batch_size=1,
            concurrency=1,
            claim_idle_ms=self.job_claim_ms,
            claim_interval_ms=max(lease_ms // 2, 1),
            max_deliveries=JOB_MAX_DELIVERIES,
        )
        self.job_slots: list[Subscription] = [
            bus.subscribe(ls.CONTROL_JOBS, ls.GROUP_TOLARIA, slot_name(consumer, i), self.on_job, job_options)
            for i in range(max_runs)
        ]
        self.readiness = BusReadiness(bus.ping)
        self.app = FastAPI(title="Esper Tolaria", description="The trainer: runs jobs, applies commands.")
        self.app.include_router(health_router(self.not_ready, (self.metrics.registry, REGISTRY)))

    # -- handlers ---------------------------------------------------------------
    async def on_job(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Run the job to its end (acked on return); raise to leave it pending when interrupted or failing."""
        job = envelope.payload
        if not isinstance(job, TrainingJob):
            log.warning("ignoring %s on %s", job.message_type, delivery.stream)
            return
        run_id = envelope.run_id
        if await self.leases.is_ended(run_id):
            log.warning("run %s: job delivered again after the run ended; nothing to do", run_id)
            return
        inbox = self.inboxes.setdefault(run_id, CommandInbox())
        held = HeldEntry(delivery.stream, delivery.group, delivery.consumer, delivery.entry_id)
        if not await self.owned.adopt(run_id, held):
            self.inboxes.pop(run_id, None)
            # Another replica trains the run. Never ack here: this may be that replica's own job entry, claimed
            # while its renewals were late; it takes the entry back with its next renewal (within a lease), and
            # then this consumer no longer holds it. A genuine second job for the run ends in the dead-letter
            # stream after its deliveries.
            owner = await self.leases.owner(run_id)
            await asyncio.sleep(self.leases.ttl_ms / 1000.0)
            raise RunInterrupted(f"run {run_id}: trained by {owner}; job entry {delivery.entry_id} not taken")
        run = ServiceRun(run_id, job, self.storage, self.bus, asyncio.get_running_loop(), inbox, self.metrics)
        log.info(
            "run %s: starting on %s (%s, %d epochs, lockstep %s)",
            run_id,
            delivery.consumer,
            job.task,
            job.epochs,
            job.lockstep,
        )
        self.metrics.active_runs.inc()
        try:
            outcome = await asyncio.to_thread(run.execute)
        except JobRejected as exc:
            log.error("run %s: job rejected: %s", run_id, exc)
            await self._announce(run_id, TelemetryEvent(kind=EventKind.RUN_FAILED, message=str(exc)))
            await self._end(run_id, inbox, f"run failed: {exc}")
            self.metrics.runs.labels("failed").inc()
            return
        except BaseException as exc:
            # Interrupted (stopping, lease lost) or failed: the job stays pending and the run resumes from its
            # checkpoint (here on retry, or on whichever replica adopts it); its commands stay on its stream.
            inbox.fail_all(RunInterrupted(f"run {run_id} interrupted: {exc}"))
            if self.inboxes.get(run_id) is inbox:
                del self.inboxes[run_id]
            if self.owned.owns(run_id):
                await self.owned.release(run_id)
            raise
        finally:
            self.metrics.active_runs.dec()
        await self._announce(run_id, finished_event(outcome, trained_by=self.consumer_name))
        await self._end(run_id, inbox, FINISHED_BEFORE_BOUNDARY)
        self.metrics.runs.labels("finished").inc()
        log.info("run %s: finished, report at %s", run_id, outcome.report_path)

    async def on_command(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Queue a command for its run's next boundary and return once it is applied and checkpointed."""
        command = envelope.payload
        if not isinstance(command, AdaptationCommand):
            log.warning("ignoring %s on %s", command.message_type, delivery.stream)
            return
        inbox = self.inboxes.get(envelope.run_id)
        if inbox is None:
            raise RunInterrupted(f"run {envelope.run_id} is not training here (any more)")
        if inbox.applied_from_decision(command.command_id):  # a late copy: answered now, not held to a boundary
            await self._reject(envelope.run_id, [command], "already applied from its decision", CommandStatus.DUPLICATE)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not inbox.put_command(PendingCommand(command, future_settler(future))):
            await self._reject(envelope.run_id, [command], FINISHED_BEFORE_BOUNDARY)
            return
        await future

    async def on_decision(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Hand Tamiyo's decision to its run (lockstep waits for it)."""
        decision = envelope.payload
        inbox = self.inboxes.get(envelope.run_id)
        if isinstance(decision, AdaptationDecision) and inbox is not None:
            inbox.put_decision(decision)

    # -- routing --------------------------------------------------------------------
    async def _admit(self, lane: str, envelope: Envelope[Message]) -> str | None:
        """Route a message to its run if some replica trains it or its job is queued; else say why not."""
        run_id = envelope.run_id
        if await self.leases.owner(run_id) is not None:
            return None
        if await self.leases.is_ended(run_id):
            return FINISHED_BEFORE_BOUNDARY
        if any(job.run_id == run_id for job in await self.leases.unacked(ls.CONTROL_JOBS, ls.GROUP_TOLARIA)):
            return None  # queued or between owners: it waits on the run's stream
        return f"unknown run {run_id!r}: no Tolaria trains it or has it queued"

    async def _refused(self, lane: str, envelope: Envelope[Message], reason: str) -> None:
        if lane == COMMANDS_LANE and isinstance(envelope.payload, AdaptationCommand):
            why = FINISHED_BEFORE_BOUNDARY if reason == "ended" else reason
            await self._reject(envelope.run_id, [envelope.payload], why)

    async def _lost(self, run_id: str) -> None:
        inbox = self.inboxes.get(run_id)
        if inbox is not None:
            inbox.fence()

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        """Consume jobs, route commands and decisions, keep leases, until :meth:`stop`."""
        async with self.readiness.consuming():
            await asyncio.gather(*(slot.run() for slot in self.job_slots), self.router.run(), self.owned.keep())

    async def stop(self) -> None:
        """Interrupt runs at their next boundary (checkpointed, jobs left pending), stop consuming, close."""
        for inbox in list(self.inboxes.values()):
            inbox.interrupt()
        for slot in self.job_slots:
            await slot.stop()
        await self.router.stop()
        await self.owned.close()
        await self.bus.aclose()

    def not_ready(self) -> str | None:
        """None once the consumers run and Redis answered a PING recently, else why not."""
        return self.readiness.not_ready()

    # -- helpers ------------------------------------------------------------------
    async def _end(self, run_id: str, inbox: CommandInbox, reason: str) -> None:
        """The run is over: nothing more is routed to it; queued commands are answered REJECTED."""
        left = inbox.close()
        await self._reject(run_id, [p.command for p in left], reason)
        for pending in left:
            pending.settle(None)

        async def leftover(lane: str, envelopes: list[Envelope[Message]]) -> None:
            commands = [e.payload for e in envelopes if isinstance(e.payload, AdaptationCommand)]
            await self._reject(run_id, commands, reason)

        await self.owned.release(run_id, ended=True, on_leftover=leftover)
        if self.inboxes.get(run_id) is inbox:
            del self.inboxes[run_id]

    async def _reject(
        self,
        run_id: str,
        commands: list[AdaptationCommand],
        reason: str,
        status: CommandStatus = CommandStatus.REJECTED,
    ) -> None:
        """Answer ``commands`` without a boundary (REJECTED, or DUPLICATE for a late copy)."""
        results = [
            Envelope(
                payload=CommandResult(
                    command_id=c.command_id,
                    action=c.action,
                    status=status,
                    slot_id=c.slot_id,
                    reason=reason,
                ),
                run_id=run_id,
            )
            for c in commands
        ]
        if results:
            await self.bus.publish_many(ls.CONTROL_RESULTS, results)
        for c in commands:
            self.metrics.commands.labels(c.action.value, status.value).inc()

    async def _announce(self, run_id: str, event: TelemetryEvent) -> None:
        await self.bus.publish(ls.TELEMETRY_EVENTS, Envelope(payload=event, run_id=run_id))


def finished_event(outcome: RunOutcome, trained_by: str | None = None) -> TelemetryEvent:
    """``run_finished`` with the report's headline numbers, where it is, and which replica finished the run."""
    report = outcome.report
    return TelemetryEvent(
        kind=EventKind.RUN_FINISHED,
        epoch=report["epochs"],
        message=f"run finished after {report['epochs']} epochs; report at {outcome.report_path}",
        attributes={
            "final_test_accuracy": report["final_test_accuracy"],
            "best_test_accuracy": report["best_test_accuracy"],
            "params_final": report["params_final"],
            "report": str(outcome.report_path),
            "epochs": report["epochs"],
            "resumed_from_epoch": outcome.resumed_from_epoch,
            "trained_by": trained_by,
            "world_size": outcome.world_size,
            "rank_divergence": outcome.rank_divergence,
        },
    )
