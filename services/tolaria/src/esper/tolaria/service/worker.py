"""One job run by the service, in its training thread: build or resume, epochs, boundaries, report.

:meth:`ServiceRun.execute` blocks (call it in a worker thread). Each epoch:

1. the trainer trains and evaluates, publishes ``TrainingSignals`` and ``LayerHealth``;
2. at the boundary they are flushed to the bus at once (Tamiyo decides while we go
   on); in lockstep the thread waits up to ``lockstep_timeout_ms`` for Tamiyo's
   decision on this epoch and, if it names a command, as long again for that
   command; then every queued command is applied (duplicates answered DUPLICATE);
3. the boundary is committed: its remaining messages (command results, seed
   transitions, events, the new model graph) are sealed into the run's outbox
   journal, the checkpoint is written, and only then are they published and the
   commands settled (their bus handlers return and Oona acks them).

A boundary is in the checkpoint or it never happened: a run killed before the
checkpoint resumes from the one before and redoes the epoch, applying its
commands again to the only model state that survives, so nothing of the lost
boundary may have been published (its commands would show two APPLIED results);
a run killed after it publishes the journal on resume, so no result of a
checkpointed boundary is lost (see :mod:`esper.tolaria.service.outbox`).

A paused run does not train: the thread waits for commands, applies each batch at
the current boundary and commits it the same way, until RESUME or STOP. A STOP
ends the run after the current boundary; the report is written as ``esper train``
writes it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.leyline import AdaptationCommand, CommandResult, Message, TrainingJob, TrainingSignals
from esper.oona import Bus
from esper.tamiyo.decide import to_command
from esper.tolaria.distributed import DataParallel
from esper.tolaria.report import REPORT_NAME
from esper.tolaria.runs import RunFolder, has_checkpoint
from esper.tolaria.service.inbox import HELD_BACK_AFTER_S, CommandInbox, PendingCommand, RunInterrupted
from esper.tolaria.service.metrics import TolariaMetrics
from esper.tolaria.service.outbox import Outbox
from esper.tolaria.service.ranks import APPLY, EPOCH, RankGroup, check_ranks
from esper.tolaria.service.storage import RunStorage

log = logging.getLogger(__name__)

#: The compute of the runs one process trains (build, epochs, commands, report) takes turns: torch.fx tracing
#: (the model graph, after every structural change) patches ``nn.Module.__call__`` for the whole process, so
#: a run traced while another trains breaks the other's forward pass; first imports and matplotlib are not
#: thread-safe either. A run lets go while it waits (lockstep, paused, publishing), so runs overlap there.
_COMPUTE = threading.Lock()


class JobRejected(ValueError):
    """The job cannot run as specified (unknown task, bad policy, missing data); the reason names the field."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A finished run: its report and where it was written."""

    report: dict[str, Any]
    report_path: Path
    resumed_from_epoch: int | None
    #: processes that trained the run, and the largest parameter difference between them at its end
    world_size: int = 1
    rank_divergence: float | None = None


class ServiceRun:
    """``job`` as run ``run_id`` in its folder from ``storage``, steered only by the commands in ``inbox``."""

    def __init__(
        self,
        run_id: str,
        job: TrainingJob,
        storage: RunStorage,
        bus: Bus,
        loop: asyncio.AbstractEventLoop,
        inbox: CommandInbox,
        metrics: TolariaMetrics,
    ) -> None:
        self.run_id, self.job, self.inbox, self.metrics = run_id, job, inbox, metrics
        self.storage = storage
        self.out_dir = storage.checkout(run_id)
        self.outbox = Outbox(bus, run_id, loop, self.out_dir)
        self.lockstep_timeout_s = job.lockstep_timeout_ms / 1000.0
        self._taken: list[PendingCommand] = []
        #: ids of this boundary's commands applied from their decisions (their copies had not arrived)
        self._from_decisions: list[str] = []
        self.parallel: DataParallel | None = None

    def execute(self) -> RunOutcome:
        """Train to the end (or STOP); raises :class:`RunInterrupted` when the service stops first,
        :class:`JobRejected` when the job cannot be built. A job with ``world_size`` > 1 trains in that many
        processes: this thread is rank 0, the others follow it (:class:`esper.tolaria.service.ranks.RankGroup`)."""
        resume = has_checkpoint(self.out_dir)
        if self.job.world_size == 1:
            return self._execute(resume, None)
        with RankGroup(self.job, self.out_dir, resume) as parallel:
            return self._execute(resume, parallel)

    def _execute(self, resume: bool, parallel: DataParallel | None) -> RunOutcome:
        self.parallel = parallel
        folder = self._open(resume, parallel)
        trainer = folder.trainer
        resumed_from = trainer.epoch if resume else None
        if resumed_from is not None:
            log.info("run %s: resumed from its checkpoint at epoch %d", self.run_id, resumed_from)
        try:
            # the boundary the checkpoint holds may not have reached the bus before the process died
            self.outbox.recover(trainer.published if resume else None)
            while not trainer.stop_requested and trainer.epoch < trainer.config.epochs:
                if self.inbox.interrupted:
                    raise RunInterrupted(f"run {self.run_id}: service stopping after epoch {trainer.epoch}")
                if trainer.paused:
                    self._hold(folder)
                    continue
                started = time.perf_counter()
                with _COMPUTE:
                    if parallel is not None:
                        parallel.agree((EPOCH,))
                    trainer.run_epoch(at_boundary=self._boundary)
                self._commit(folder)
                self.metrics.epochs.inc()
                self.metrics.epoch_seconds.observe(time.perf_counter() - started)
        except BaseException as exc:
            folder.close()
            self._settle(exc if isinstance(exc, RunInterrupted) else RunInterrupted(str(exc)))
            raise
        divergence = None
        with _COMPUTE:
            if parallel is not None:
                divergence = check_ranks(parallel, trainer.model)
            report = folder.finish()
        self.storage.commit(self.run_id, self.out_dir)
        return RunOutcome(report, self.out_dir / REPORT_NAME, resumed_from, self.job.world_size, divergence)

    def _open(self, resume: bool, parallel: DataParallel | None = None) -> RunFolder:
        try:
            with _COMPUTE:
                return RunFolder.open(
                    self.job,
                    self.out_dir,
                    resume=resume,
                    sinks=(self._observe, self.outbox),
                    decide_in_process=False,
                    run_id=self.run_id,
                    mode="lockstep" if self.job.lockstep else "async",
                    parallel=parallel,
                )
        except (ValueError, FileNotFoundError) as exc:
            raise JobRejected(str(exc)) from exc

    def _observe(self, message: Message) -> None:
        if isinstance(message, CommandResult):
            self.metrics.commands.labels(message.action.value, message.status.value).inc()

    def _boundary(self, signals: TrainingSignals) -> list[AdaptationCommand]:
        """Trainer hook after an epoch's signals are published: flush them, wait in lockstep, take commands.

        The boundary's policy commands apply first, in their decisions' order
        (as in process), then any other command in the order it arrived.
        """
        if self.inbox.fenced:
            return []  # another replica owns the run now: apply nothing (the commit refuses to checkpoint)
        _COMPUTE.release()  # held by execute() around run_epoch: other runs compute while this one waits
        decided: list[AdaptationCommand] = []
        try:
            self.outbox.flush()
            if self.job.lockstep:
                decided = self._await_tamiyo(signals)
        finally:
            _COMPUTE.acquire()
        self._taken = self.inbox.take_commands()
        arrived = {p.command.command_id: p.command for p in self._taken}
        self._from_decisions = [c.command_id for c in decided if c.command_id not in arrived]
        ordered = [arrived.pop(c.command_id, c) for c in decided]
        return ordered + [p.command for p in self._taken if p.command.command_id in arrived]

    def _await_tamiyo(self, signals: TrainingSignals) -> list[AdaptationCommand]:
        """Wait for Tamiyo's decisions on this epoch and for the commands they name, in decision order.

        A decision carries everything its command does (Tamiyo builds the
        command from it with the same function), so when a command itself is
        late it is rebuilt from the decision and applied at this boundary, as
        in process; the late copy is answered DUPLICATE. A command read after
        commands already queued here cannot arrive before this boundary settles
        them (their handlers hold the read batch), so it is not waited for.
        """
        epoch = signals.epoch
        decisions = self.inbox.wait_for_decisions(epoch, self.lockstep_timeout_s)
        if decisions is None:
            if not self.inbox.interrupted:
                log.warning(
                    "run %s: lockstep: no decisions on epoch %d within %d ms; going on",
                    self.run_id,
                    epoch,
                    self.job.lockstep_timeout_ms,
                )
            return []
        commands = []
        for decision in decisions:
            command = to_command(decision, signals)
            if command is None:
                continue
            commands.append(command)
            if not self.inbox.wait_for_command(
                self.lockstep_timeout_s, decision.command_id, held_back_after_s=HELD_BACK_AFTER_S
            ):
                log.warning(
                    "run %s: lockstep: command %s of epoch %d's decision not received (within %d ms, or held "
                    "back behind commands queued for this boundary); applying it from the decision",
                    self.run_id,
                    decision.command_id,
                    epoch,
                    self.job.lockstep_timeout_ms,
                )
        return commands

    def _hold(self, folder: RunFolder) -> None:
        """Paused: no epochs; apply commands at this boundary as they come, until RESUME or STOP."""
        if not self.inbox.wait_for_command():
            return  # interrupted: the loop raises
        self._taken = self.inbox.take_commands()
        commands = [p.command for p in self._taken]
        with _COMPUTE:
            if self.parallel is not None:  # the other ranks apply the same commands at this boundary
                self.parallel.agree((APPLY, commands))
            folder.trainer.apply_commands(commands)
            if self.parallel is not None:
                self.parallel.broadcast_module(folder.trainer.model)
        self._commit(folder)

    def _commit(self, folder: RunFolder) -> None:
        """Seal what the boundary produced, checkpoint it, publish it, then let the bus ack its commands.

        Results are published only once the checkpoint holds them: a resumed run never redoes a boundary
        whose results are on the bus (that would report its commands APPLIED twice).
        """
        if self.inbox.fenced:
            raise RunInterrupted(f"run {self.run_id}: lease lost; the new owner resumes from the last checkpoint")
        self.outbox.seal(folder.trainer.published)
        folder.checkpoint()
        self.storage.commit(self.run_id, self.out_dir)
        if self.inbox.fenced:  # the new owner publishes the journal if it resumes from this checkpoint
            raise RunInterrupted(f"run {self.run_id}: lease lost at the checkpoint; the boundary is left to its owner")
        self.outbox.publish_sealed()
        self.inbox.note_applied_from_decisions(self._from_decisions)  # before the settle lets the bus read on
        self._from_decisions = []
        self._settle(None)

    def _settle(self, error: BaseException | None) -> None:
        taken, self._taken = self._taken, []
        for pending in taken:
            pending.settle(error)
