"""The Tolaria service: jobs, commands and decisions from the bus; one run at a time in a training thread.

Three Oona consumers in group ``tolaria``, all under this process's consumer name:

* ``CONTROL_JOBS`` (concurrency 1): the handler runs the whole job
  (:class:`ServiceRun` in a thread) and returns, so Oona acks the job, only
  once the run has finished and its report is written. A killed Tolaria gets
  the job back from its own pending list when it restarts under the same name
  and resumes it from ``runs_dir/<run_id>/checkpoint.pt``.
* ``CONTROL_COMMANDS`` (a whole batch at a time): a command for the running run
  is queued for the next boundary and its handler waits until the command was
  applied or rejected, the result published and the checkpoint written; a
  command for a run this process is not running is answered REJECTED
  ("unknown run") at once.
* ``CONTROL_DECISIONS``: Tamiyo's decisions, which a lockstep run waits for.

One run at a time per process: the jobs consumer holds the next job until the
current one ends.
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
from esper.oona import Bus, ConsumerOptions, Delivery, Subscription
from esper.service import BusReadiness, health_router
from esper.tolaria.service.inbox import CommandInbox, PendingCommand, RunInterrupted, future_settler
from esper.tolaria.service.metrics import TolariaMetrics
from esper.tolaria.service.worker import JobRejected, RunOutcome, ServiceRun

log = logging.getLogger(__name__)

#: A running job stays pending for its whole run: another consumer must not claim it from a live Tolaria.
JOB_CLAIM_IDLE_MS = 24 * 3600 * 1000
#: Every restart re-delivers the running job; a run that takes the process down this often is dead-lettered.
JOB_MAX_DELIVERIES = 20


class TolariaService:
    """Tolaria wired to the bus and HTTP: ``run()`` is the background loop, ``stop()`` the shutdown hook."""

    def __init__(
        self,
        bus: Bus,
        runs_dir: Path,
        consumer: str,
        *,
        metrics: TolariaMetrics | None = None,
        command_options: ConsumerOptions | None = None,
    ) -> None:
        self.bus = bus
        self.runs_dir = Path(runs_dir)
        self.consumer_name = consumer
        self.metrics = metrics or TolariaMetrics()
        #: Runs whose commands are accepted: the running one, and one this process will resume.
        self.inboxes: dict[str, CommandInbox] = {}
        self.jobs: Subscription = bus.subscribe(
            ls.CONTROL_JOBS,
            ls.GROUP_TOLARIA,
            consumer,
            self.on_job,
            ConsumerOptions(
                batch_size=1, concurrency=1, claim_idle_ms=JOB_CLAIM_IDLE_MS, max_deliveries=JOB_MAX_DELIVERIES
            ),
        )
        batch = ConsumerOptions().batch_size
        self.commands: Subscription = bus.subscribe(
            ls.CONTROL_COMMANDS,
            ls.GROUP_TOLARIA,
            consumer,
            self.on_command,
            command_options or ConsumerOptions(batch_size=batch, concurrency=batch),
        )
        self.decisions: Subscription = bus.subscribe(
            ls.CONTROL_DECISIONS, ls.GROUP_TOLARIA, consumer, self.on_decision, ConsumerOptions()
        )
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
        inbox = self.inboxes.setdefault(run_id, CommandInbox())
        run = ServiceRun(run_id, job, self.runs_dir, self.bus, asyncio.get_running_loop(), inbox, self.metrics)
        log.info("run %s: starting (%s, %d epochs, lockstep %s)", run_id, job.task, job.epochs, job.lockstep)
        self.metrics.active_runs.inc()
        try:
            outcome = await asyncio.to_thread(run.execute)
        except JobRejected as exc:
            log.error("run %s: job rejected: %s", run_id, exc)
            await self._end(run_id, inbox, f"run failed: {exc}")
            await self._announce(run_id, TelemetryEvent(kind=EventKind.RUN_FAILED, message=str(exc)))
            self.metrics.runs.labels("failed").inc()
            return
        except RunInterrupted:
            inbox.fail_all(RunInterrupted(f"run {run_id} interrupted"))
            raise
        except Exception:
            # retried by the jobs consumer (same process), resuming from the checkpoint
            inbox.fail_all(RunInterrupted(f"run {run_id} failed; it will be resumed"))
            if delivery.deliveries >= JOB_MAX_DELIVERIES:
                self.inboxes.pop(run_id, None)
            raise
        finally:
            self.metrics.active_runs.dec()
        await self._end(run_id, inbox, "run finished before the command's boundary")
        await self._announce(run_id, finished_event(outcome))
        self.metrics.runs.labels("finished").inc()
        log.info("run %s: finished, report at %s", run_id, outcome.report_path)

    async def on_command(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Queue a command for its run's next boundary and return once it is applied and checkpointed."""
        command = envelope.payload
        if not isinstance(command, AdaptationCommand):
            log.warning("ignoring %s on %s", command.message_type, delivery.stream)
            return
        inbox = self.inboxes.get(envelope.run_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if inbox is None or not inbox.put_command(PendingCommand(command, future_settler(future))):
            await self._reject(envelope.run_id, [command], f"unknown run {envelope.run_id!r}: not running here")
            return
        await future

    async def on_decision(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Hand Tamiyo's decision to its run (lockstep waits for it); decisions of other runs are dropped."""
        decision = envelope.payload
        inbox = self.inboxes.get(envelope.run_id)
        if isinstance(decision, AdaptationDecision) and inbox is not None:
            inbox.put_decision(decision)

    # -- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        """Consume jobs, commands and decisions until :meth:`stop`."""
        for run_id in await self.pending_job_runs():
            log.info("run %s: pending from an earlier life of %s; it will resume", run_id, self.consumer_name)
            self.inboxes.setdefault(run_id, CommandInbox())
        async with self.readiness.consuming():
            await asyncio.gather(self.jobs.run(), self.commands.run(), self.decisions.run())

    async def stop(self) -> None:
        """Interrupt the run at its next boundary (checkpointed, job left pending), stop consuming, close."""
        for inbox in self.inboxes.values():
            inbox.interrupt()
        await self.jobs.stop()
        for inbox in self.inboxes.values():  # commands waiting for a run that will not start now
            inbox.fail_all(RunInterrupted("service stopping"))
        await self.commands.stop()
        await self.decisions.stop()
        await self.bus.aclose()

    async def pending_job_runs(self) -> list[str]:
        """Run ids of jobs this consumer holds unacked (it was killed mid-run): their commands must wait, not
        be rejected as unknown, while the jobs consumer gets back to them."""
        held = await self.bus.pending(ls.CONTROL_JOBS, ls.GROUP_TOLARIA, self.consumer_name)
        return [envelope.run_id for envelope in held]

    def not_ready(self) -> str | None:
        """None once the consumers run and Redis answered a PING recently, else why not."""
        return self.readiness.not_ready()

    # -- helpers ------------------------------------------------------------------
    async def _end(self, run_id: str, inbox: CommandInbox, reason: str) -> None:
        """Close the run's inbox; commands that arrived after its last boundary are answered REJECTED."""
        left = inbox.close()
        if self.inboxes.get(run_id) is inbox:
            del self.inboxes[run_id]
        await self._reject(run_id, [p.command for p in left], reason)
        for pending in left:
            pending.settle(None)

    async def _reject(self, run_id: str, commands: list[AdaptationCommand], reason: str) -> None:
        results = [
            Envelope(
                payload=CommandResult(
                    command_id=c.command_id,
                    action=c.action,
                    status=CommandStatus.REJECTED,
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
            self.metrics.commands.labels(c.action.value, CommandStatus.REJECTED.value).inc()

    async def _announce(self, run_id: str, event: TelemetryEvent) -> None:
        await self.bus.publish(ls.TELEMETRY_EVENTS, Envelope(payload=event, run_id=run_id))


def finished_event(outcome: RunOutcome) -> TelemetryEvent:
    """``run_finished`` with the report's headline numbers and where it is."""
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
        },
    )
