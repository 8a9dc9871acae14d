"""The epoch loop: train with the mode the slots' stages call for, validate, measure
seeds, publish signals, ask the policy, apply its command at the epoch boundary.

Order within epoch ``e`` (1-based): (the run's ``ModelGraph``, before the first
epoch) -> train steps -> (governor rollback if a step tripped) -> validation
and counterfactuals on the validation split -> tracker ->
``TrainingSignals``/``LayerHealth`` published -> Tamiyo's decide step on them
(:func:`esper.tamiyo.decide.decide_boundary`: policy, safety monitor, commands,
up to one per slot; when the trainer has an in-process policy) -> ``at_boundary`` hook (the service waits
for Tamiyo's commands here) -> the commands are applied -> ``model.end_epoch(e)``
-> a new ``ModelGraph`` if the network changed -> snapshot for the governor.
The test split is evaluated for the record only (nothing reads it back), every
``config.test_every`` epochs (NaN in the epochs between); layer health every
``config.health_every``; both default to about once per pass over the data.

With ``config.steps_per_epoch`` an epoch is that many steps, and a boundary
follows every epoch while seeds are in flight. Once the network is settled
(every slot DORMANT or FOSSILIZED) and the policy let a boundary pass without a
command, one round of training runs on to the epoch in which the current pass
over the data ends (``Trainer.round_epochs``, ``config.lengthen_settled``):
epochs keep their length and numbering, so the schedule, ``config.epochs`` and
every per-N-epochs cadence are unchanged, but the run is not stopped for
decisions, validation and snapshots it does not need.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch

from esper.kasmina import KasminaConfig, MorphogeneticModel, wrap
from esper.kasmina.graph import describe
from esper.kasmina.kernels import KernelLoader
from esper.leyline import (
    RUN_ACTIONS,
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    EventKind,
    LayerHealth,
    Message,
    ModelGraph,
    SeedStage,
    TelemetryEvent,
    TrainingSignals,
)
from esper.tamiyo.decide import decide_boundary, run_snapshot
from esper.tamiyo.policies import DEFAULT_SAFETY
from esper.tamiyo.policy import Policy
from esper.tamiyo.safety import SafetyMonitor
from esper.tamiyo.tracker import SignalTracker
from esper.tolaria.commands import apply_slot_command
from esper.tolaria.config import EpochRecord, TrainerConfig, reaches_multiple, seed_everything
from esper.tolaria.device import resolve_device
from esper.tolaria.distributed import DataParallel
from esper.tolaria.evaluation import HEALTH_ROWS, Evaluation, LayerCapture, evaluate, layer_health, measure_seed
from esper.tolaria.governor import Governor, Trip, offending_slot
from esper.tolaria.modes import MEASURED_STAGES, SETTLED_STAGES
from esper.tolaria.precision import autocast_for
from esper.tolaria.schedule import lr_factor
from esper.tolaria.steps import host_only_parameters, train_epoch
from esper.tolaria.tasks import Split, Task

Sink = Callable[[Message], None]


#: Called after an epoch's signals and health are published; returns commands to apply at that boundary.
BoundaryHook = Callable[[TrainingSignals], Iterable[AdaptationCommand]]


class Trainer:
    """Trains ``task``'s host wrapped by Kasmina, with ``policy`` deciding each epoch.

    ``policy=None`` means no in-process decisions: the trainer publishes no
    decision and applies only the commands it is given (the Tolaria service,
    where Tamiyo decides over the bus). With a policy, each epoch goes through
    the same decide step as the Tamiyo service (``safety``, by default the
    service's defaults; ``param_budget`` from the job). Every message (model
    graphs, signals, health, decisions, command results, seed transitions,
    events) goes to each of ``sinks`` in order. With ``kernels``, a germinated
    seed comes from its compiled kernel when that loads (else it is built
    eagerly and a ``kernel_fallback`` event is published).
    """

    def __init__(
        self,
        task: Task,
        policy: Policy | None,
        config: TrainerConfig | None = None,
        *,
        kasmina: KasminaConfig | None = None,
        sinks: Iterable[Sink] = (),
        run_id: str = "local",
        safety: SafetyMonitor | None = None,
        param_budget: int | None = None,
        parallel: DataParallel | None = None,
        kernels: KernelLoader | None = None,
    ) -> None:
        self.policy = policy
        #: where germinated seeds come from when their kernel loads (``esper.kasmina.kernels``); None: eager only
        self.kernels = kernels
        #: This process's part of a data parallel run (``esper.tolaria.distributed``); None in one process.
        self.parallel = parallel
        self.run_id, self.param_budget = run_id, param_budget
        self.safety = safety or SafetyMonitor(DEFAULT_SAFETY)
        self.config = config or TrainerConfig()
        #: where the model, its seeds and the task's splits live (``config.device`` resolved on this machine)
        self.device = resolve_device(self.config.device)
        self.task = task.to(self.device)
        #: entered around every forward pass that trains or scores the run (``config.precision``)
        self.autocast = autocast_for(self.config.precision, self.device)
        seed_everything(self.config.seed)
        # built on the CPU and then moved: the initial weights are the same wherever the run trains
        host = task.build_host()
        self.model: MorphogeneticModel = wrap(host, task.slots, config=kasmina, layouts=task.layouts).to(self.device)
        self.model.probe(self.task.train.x[:2])
        if parallel is not None:
            parallel.broadcast_module(self.model)
        self.params_initial = self.model.param_count()
        self.optimizers: dict[str, torch.optim.Optimizer] = {"host": self._optimizer(self.host_parameters())}
        self.generator = torch.Generator().manual_seed(self.config.seed)
        #: the shuffled pass batches are being drawn from, and the next batch in it (see steps.epoch_batches)
        self.data_order: torch.Tensor | None = None
        self.data_batch = 0
        self.tracker = SignalTracker()
        self.governor = Governor(self.config.governor)
        self.sinks: list[Sink] = list(sinks)
        self.epoch = 0
        self.step = 0
        self.history: list[EpochRecord] = []
        self.decisions: list[AdaptationDecision] = []
        self.applied_commands: list[str] = []
        self.published = 0
        self.events_seen = 0
        self.paused = False
        self.stop_requested = False
        #: the last boundary applied no slot command (False before the first: a run starts with short rounds)
        self.quiet_boundary = False
        self.wall_seconds = 0.0
        #: the newest ModelGraph published, how many were, and the structure it described
        self.graph: ModelGraph | None = None
        #: the newest LayerHealth measured (see ``_due``)
        self.health: LayerHealth | None = None
        self.graph_revision = -1
        self._graph_key: tuple[tuple[str, str | None], ...] | None = None
        self.governor.take_snapshot(0, self.model, self.optimizers)

    # -- parameters and optimizers --------------------------------------------
    def host_parameters(self) -> list[torch.nn.Parameter]:
        """What the host optimizer steps: every parameter but those of seeds with an optimizer of their own."""
        # getattr: __init__ asks before the optimizers exist (no seed exists then either)
        return host_only_parameters(self.model, set(getattr(self, "optimizers", ())) - {"host"})

    def new_host_optimizer(self) -> torch.optim.Optimizer:
        """A fresh host optimizer over :meth:`host_parameters` (no state)."""
        return self._optimizer(self.host_parameters())

    def _optimizer(self, params: list[torch.nn.Parameter], *, seed: bool = False) -> torch.optim.Optimizer:
        base = (self.config.seed_lr or self.config.lr) if seed else self.config.lr
        return torch.optim.Adam(params, lr=base * self._lr_factor(getattr(self, "step", 0)))

    def new_seed_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer a freshly germinated seed trains with."""
        return self._optimizer(params, seed=True)

    def steps_per_epoch(self) -> int:
        """Training steps in one epoch: the configured number, else one pass over the training split."""
        return self.config.steps_per_epoch or math.ceil(len(self.task.train) / self.config.batch_size)

    def steps_per_pass(self) -> int:
        """Training steps in one pass over the training split."""
        return math.ceil(len(self.task.train) / self.config.batch_size)

    def epochs_per_pass(self) -> int:
        """Epochs in about one pass over the training split (1 with the default epoch length)."""
        return max(1, round(self.steps_per_pass() / self.steps_per_epoch()))

    def settled(self) -> bool:
        """No seed in flight (every slot DORMANT or FOSSILIZED) and the last boundary applied no slot command."""
        return self.quiet_boundary and all(SeedStage(s.stage) in SETTLED_STAGES for s in self.model.slots.values())

    def round_epochs(self) -> int:
        """Epochs the next round of training covers before its boundary: 1, or, with ``steps_per_epoch``
        and ``lengthen_settled`` while :meth:`settled`, up to the epoch in which the current pass ends."""
        cfg = self.config
        if cfg.steps_per_epoch is None or not cfg.lengthen_settled or self.paused or not self.settled():
            return 1
        per_pass = self.steps_per_pass()
        in_pass = self.data_batch if self.data_order is not None and self.data_batch < per_pass else 0
        return max(1, min(math.ceil((per_pass - in_pass) / cfg.steps_per_epoch), cfg.epochs - self.epoch))

    def _due(self, every: int | None, epoch: int) -> bool:
        """Whether per-``every``-epochs work (None: once per pass) is due in the round from ``self.epoch`` to
        ``epoch``: a multiple of ``every`` was reached in it; always at the first epoch."""
        return self.epoch == 0 or reaches_multiple(epoch, epoch - self.epoch, every or self.epochs_per_pass())

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.config.lr_schedule, step, self.config.epochs * self.steps_per_epoch())

    def host_waits(self) -> bool:
        """Whether the host sits this step out (``config.host_wait_steps``): early in the run, while a slot
        has no seed in the forward yet."""
        return self.step < self.config.host_wait_steps and not all(s.in_forward for s in self.model.slots.values())

    def set_lr(self) -> float:
        """Set every optimizer's rate for the current step; returns the schedule's rate for the host."""
        factor = self._lr_factor(self.step)
        host = 0.0 if self.host_waits() else 1.0
        for name, opt in self.optimizers.items():
            base = self.config.lr * host if name == "host" else (self.config.seed_lr or self.config.lr)
            for group in opt.param_groups:
                group["lr"] = base * factor
        return self.config.lr * factor

    # -- publishing -----------------------------------------------------------
    def publish(self, message: Message) -> None:
        self.published += 1
        for sink in self.sinks:
            sink(message)

    def _structure(self) -> tuple[tuple[str, str | None], ...]:
        return tuple((sid, slot.seed_id if slot.seed is not None else None) for sid, slot in self.model.slots.items())

    def publish_graph(self, *, force: bool = False) -> ModelGraph | None:
        """Publish the model's :class:`ModelGraph` if the network changed since the last one (or ``force``)."""
        if not force and self._structure() == self._graph_key:
            return None
        self.graph_revision += 1
        graph = self.describe_graph()
        self.publish(graph)
        return graph

    def describe_graph(self) -> ModelGraph:
        """Describe the network as it is now (as revision ``graph_revision``) and hold it as the current graph.

        A resumed run calls this without publishing: its graph was published before the checkpoint.
        """
        self.graph = describe(self.model, self.task.train.x[:2], epoch=self.epoch, revision=max(self.graph_revision, 0))
        self._graph_key = self._structure()
        return self.graph

    def _publish_transitions(self) -> None:
        for event in self.model.events[self.events_seen :]:
            self.publish(event)
        self.events_seen = len(self.model.events)

    # -- one epoch ------------------------------------------------------------
    def _rollback(self, epoch: int, trip: Trip) -> None:
        """Restore the last good state, cull the seed held responsible, say why."""
        restored = self.governor.restore(self.model, self.optimizers)
        culprit = offending_slot(self.model)
        reason = f"governor: {trip.reason}; rolled back to the end of epoch {restored}"
        if culprit is not None:
            self.model.cull(culprit, epoch=epoch, reason=reason, val_loss=self.val_loss)
            self.optimizers.pop(culprit, None)
        self.publish(
            TelemetryEvent(
                kind=EventKind.GOVERNOR_ROLLBACK,
                epoch=epoch,
                slot_id=culprit,
                message=reason if culprit else reason + "; no live seed to cull",
                attributes={"trip": trip.kind, "loss": trip.loss, "restored_epoch": restored},
            )
        )
        self._publish_transitions()

    def _measure(self, val: Evaluation, grad_norms: dict[str, float]) -> None:
        for slot_id, slot in self.model.slots.items():
            if SeedStage(slot.stage) not in MEASURED_STAGES:
                continue
            with self.autocast():
                m = measure_seed(
                    self.model, slot_id, self.task.val, val, self.config.eval_batch_size, self.task.objective
                )
            self.model.record_metrics(
                slot_id,
                improvement=m.improvement,
                contribution=m.contribution,
                contribution_loss=m.contribution_loss,
                seed_grad_norm=grad_norms.get(slot_id, 0.0),
                host_grad_norm=grad_norms.get("host", 0.0),
                isolation_violations=int(grad_norms.get("isolation_violations", 0)),
            )

    def apply_commands(self, commands: Iterable[AdaptationCommand], epoch: int | None = None) -> list[CommandResult]:
        """Apply ``commands`` in order at the boundary after ``epoch`` (default: the last finished epoch).

        Each result and the seed transitions it caused are published. A command id
        applied before (this run, including before a resume) yields DUPLICATE.
        Outside :meth:`run_epoch` (a paused run) the governor's snapshot is
        retaken, so a later rollback keeps what the commands changed.
        """
        inside_epoch = epoch is not None
        at = self.epoch if epoch is None else epoch
        results = []
        for command in commands:
            result = self._apply(command, at)
            self.publish(result)
            self._publish_transitions()
            results.append(result)
        if results and not inside_epoch:
            self.publish_graph()
            self.governor.take_snapshot(self.epoch, self.model, self.optimizers)
        return results

    def _apply(self, command: AdaptationCommand, epoch: int) -> CommandResult:
        if command.command_id in self.applied_commands:
            return CommandResult(
                command_id=command.command_id,
                action=command.action,
                status=CommandStatus.DUPLICATE,
                slot_id=command.slot_id,
                epoch=epoch,
                reason="already applied",
            )
        self.applied_commands.append(command.command_id)
        if command.action in RUN_ACTIONS:
            self.paused = command.action is CommandAction.PAUSE or (
                self.paused and command.action is CommandAction.STOP
            )
            self.stop_requested = command.action is CommandAction.STOP
            return CommandResult(
                command_id=command.command_id,
                action=command.action,
                status=CommandStatus.APPLIED,
                epoch=epoch,
                reason=command.reason or command.action.value,
            )
        return apply_slot_command(
            self.model,
            self.optimizers,
            command,
            epoch,
            self.new_seed_optimizer,
            kernels=self.kernels,
            on_event=self.publish,
            val_loss=self.val_loss,
        )

    def score(self, split: Split) -> Evaluation:
        """``split`` scored as the run scores it: under the run's precision and, in a parallel run, sharded
        over the ranks and reduced (every rank gets the same numbers, so every rank decides alike)."""
        score = evaluate if self.parallel is None else self.parallel.evaluate
        with self.autocast():
            return score(self.model, split, self.config.eval_batch_size, self.task.objective)

    def val_loss(self) -> float:
        """The model's loss on the validation split now (what a cull weighs the host's two states by)."""
        return self.score(self.task.val).loss

    def run_epoch(
        self, commands: Iterable[AdaptationCommand] = (), *, at_boundary: BoundaryHook | None = None
    ) -> EpochRecord:
        """Run the next epoch; ``commands`` (e.g. from an operator) apply after the policy's.

        ``at_boundary(signals)`` runs once the epoch's signals and health are
        published; the commands it returns apply after ``commands``.
        """
        if self.graph is None:
            self.publish_graph(force=True)
        span = self.round_epochs()
        epoch = self.epoch + span
        started = time.perf_counter()
        if self.paused:
            train_loss = train_acc = math.nan
            modes, trip, norms = {}, None, {}
        else:
            out = train_epoch(self, span * self.steps_per_epoch())  # the round's steps (esper.tolaria.steps)
            train_loss, train_acc, modes, trip, norms = out.loss, out.accuracy, out.modes, out.trip, out.norms
        if trip is not None:
            self._rollback(epoch, trip)
        health_due = self.health is None or self._due(self.config.health_every, epoch)  # None: checkpoint without it
        # layer health read off the validation pass when its first batch holds the rows health looks at
        fused = health_due and self.parallel is None and self.config.eval_batch_size >= HEALTH_ROWS
        with LayerCapture(self.model, self.task.slots) if fused else nullcontext() as capture:
            val = self.score(self.task.val)
        test = None
        if self._due(self.config.test_every, epoch) or epoch >= self.config.epochs:
            test = self.score(self.task.test)
        self._measure(val, norms)
        tracked = self.tracker.update(
            epoch=epoch, train_loss=train_loss, val_loss=val.loss, train_accuracy=train_acc, val_accuracy=val.accuracy
        )
        lr = self.config.lr * self._lr_factor(self.step)
        signals = tracked.signals(
            step=self.step,
            params_total=self.model.param_count(),
            seeds=self.model.reports(),
            learning_rate=lr,
            epoch_seconds=time.perf_counter() - started,
            paused=self.paused,
        )
        self.publish(signals)
        if health_due:
            layers = (
                capture.reports()
                if capture is not None
                else layer_health(self.model, self.task.slots, self.task.val.x[:HEALTH_ROWS])
            )
            self.health = LayerHealth(epoch=epoch, layers=layers)
            self.publish(self.health)
        to_apply: list[AdaptationCommand] = []
        if self.policy is not None:
            snapshot = run_snapshot(
                self.run_id, signals, graph=self.graph, telemetry_at=time.time(), param_budget=self.param_budget
            )
            for decided in decide_boundary(
                self.policy, signals, snapshot, self.safety, graph=self.graph, health=self.health
            ):
                self.decisions.append(decided.decision)
                self.publish(decided.decision)
                if decided.command is not None:
                    to_apply.append(decided.command)
        to_apply.extend(commands)
        if at_boundary is not None:
            to_apply.extend(at_boundary(signals))
        if self.parallel is not None:  # every rank applies rank 0's commands, and then holds its weights
            to_apply = self.parallel.agree(to_apply)
        results = self.apply_commands(to_apply, epoch)
        self.quiet_boundary = not any(
            r.status is CommandStatus.APPLIED and r.action not in RUN_ACTIONS for r in results
        )
        if self.parallel is not None and to_apply:
            self.parallel.broadcast_module(self.model)
        self.model.end_epoch(epoch)
        self._publish_transitions()
        self.epoch = epoch
        self.publish_graph()
        self.governor.take_snapshot(epoch, self.model, self.optimizers)
        seconds = time.perf_counter() - started
        self.wall_seconds += seconds
        record = EpochRecord(
            epoch=epoch,
            step=self.step,
            train_loss=tracked.train_loss,
            train_accuracy=tracked.train_accuracy,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            test_loss=test.loss if test is not None else math.nan,
            test_accuracy=test.accuracy if test is not None else math.nan,
            lr=lr,
            params=self.model.param_count(),
            modes=modes,
            stages=dict(Counter(SeedStage(s.stage).name for s in self.model.slots.values())),
            rolled_back=trip is not None,
            epoch_seconds=seconds,
            span=span,
        )
        self.history.append(record)
        return record

    def fit(
        self, *, stop_after: int | None = None, on_epoch: Callable[[Trainer, EpochRecord], Any] | None = None
    ) -> list[EpochRecord]:
        """Train up to ``config.epochs`` (or until a round reaches epoch ``stop_after``, or a STOP command);
        ``on_epoch`` runs after each round (checkpointing, progress), with its record."""
        last = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        while self.epoch < last and not self.stop_requested:
            record = self.run_epoch()
            if on_epoch is not None:
                on_epoch(self, record)
        return self.history
