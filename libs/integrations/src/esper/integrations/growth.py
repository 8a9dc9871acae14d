"""A growth session: Kasmina and Tamiyo's decide step driven from someone else's training loop.

Tolaria owns its loop; a user's loop (Lightning, a hand-written one) does not
belong to Esper, so this class offers the same steps as calls the loop makes:

1. :meth:`GrowthSession.probe` on the first batch (slots learn their shapes
   and layouts, the :class:`~esper.leyline.ModelGraph` is described);
2. :meth:`GrowthSession.train_batch` around each backward pass: seeds learn
   jointly with the host by default; an isolated seed
   (``KasminaConfig.isolate_seeds``) in TRAINING gets the isolated pass (it
   learns from the loss at alpha 1 on detached host features; the host learns
   nothing from it) and, once per boundary, a
   :class:`~esper.kasmina.GradientIsolationMonitor` counts leaks;
3. :meth:`GrowthSession.boundary` at each validation end: the model is
   evaluated on the validation batches with every live seed switched off and at
   alpha 1 (the counterfactuals the gates read), ``TrainingSignals`` are built,
   Tamiyo's :func:`~esper.tamiyo.decide.decide_boundary` runs with the default safety
   monitor, its command is applied through Kasmina's gates, and the epoch ends;
   the returned :class:`Changes` say which seed parameters the loop's optimizer
   must add or drop (:func:`esper.integrations.schedulers.add_group` and
   :func:`~esper.integrations.schedulers.remove_groups` do it and keep the
   loop's learning-rate schedulers in step, as ``EsperCallback`` does);
4. :meth:`GrowthSession.export` at the end.

Every message (graphs, signals, decisions, command results, seed transitions)
goes to ``sinks`` and to :attr:`GrowthSession.messages`, as Tolaria publishes
them; :meth:`GrowthSession.report` summarizes the run like Tolaria's report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina import (
    GradientIsolationMonitor,
    KasminaConfig,
    MorphogeneticModel,
    export,
    lifecycle_state,
    restore_lifecycle,
    wrap,
)
from esper.kasmina.graph import describe
from esper.leyline import (
    AdaptationCommand,
    CommandAction,
    CommandResult,
    CommandStatus,
    Message,
    ModelGraph,
    SeedStage,
    TrainingJob,
    TrainingSignals,
)
from esper.tamiyo.decide import decide_boundary, run_snapshot
from esper.tamiyo.policies import DEFAULT_SAFETY, make_policy
from esper.tamiyo.policy import Policy
from esper.tamiyo.safety import SafetyMonitor
from esper.tamiyo.tracker import SignalTracker

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
MEASURED = frozenset({SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY})
#: The policy a session builds unless told: the default job's (the heuristic asked once per slot)
DEFAULT_POLICY = TrainingJob().policy


def accuracy_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch of logits (N, classes) against labels (N,)."""
    return (output.argmax(dim=1) == target).sum()


@dataclass
class Changes:
    """Seed parameters to add to the loop's optimizer (germinated) and to drop from it (culled), by slot."""

    added: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    removed: dict[str, list[nn.Parameter]] = field(default_factory=dict)


class GrowthSession:
    """Seeds grown in ``host`` (any ``nn.Module``) at ``slots`` by ``policy``, from outside the training loop.

    ``loss(output, target)`` is the mean loss and ``score(output, target)`` the
    summed per-sample score (accuracy by default) the gates read; ``policy`` a
    name :func:`~esper.tamiyo.policies.make_policy` knows or a policy object.
    """

    def __init__(
        self,
        host: nn.Module,
        slots: Mapping[str, str],
        *,
        layouts: Mapping[str, str] | None = None,
        policy: str | Policy = DEFAULT_POLICY,
        param_budget: int | None = None,
        kasmina: KasminaConfig | None = None,
        loss: Loss = F.cross_entropy,
        score: Loss = accuracy_sum,
        safety: SafetyMonitor | None = None,
        run_id: str = "local",
        sinks: Iterable[Callable[[Message], None]] = (),
    ) -> None:
        self.model: MorphogeneticModel = wrap(host, slots, config=kasmina, layouts=layouts)
        job = TrainingJob(policy=policy if isinstance(policy, str) else DEFAULT_POLICY, param_budget=param_budget)
        self.policy = make_policy(policy, job) if isinstance(policy, str) else policy
        self.param_budget, self.run_id = param_budget, run_id
        self.loss, self.score = loss, score
        self.safety = safety or SafetyMonitor(DEFAULT_SAFETY)
        self.tracker = SignalTracker()
        self.sinks = list(sinks)
        self.messages: list[Message] = []
        self.example: torch.Tensor | None = None
        self.graph: ModelGraph | None = None
        self.epoch = 0
        self.params_initial = 0
        self._graph_key: tuple[Any, ...] | None = None
        self._events_seen = 0
        self._monitor: GradientIsolationMonitor | None = None
        self._violations = 0
        self._watched = False
        self._seed_norms: dict[str, list[float]] = {}
        self._started = time.perf_counter()

    # -- the loop's calls ------------------------------------------------------
    def publish(self, message: Message) -> None:
        self.messages.append(message)
        for sink in self.sinks:
            sink(message)

    def probe(self, example: torch.Tensor) -> None:
        """Learn every slot's shape and layout from a batch (N >= 1) and describe the model."""
        self.example = example[:2].detach()
        self.model.probe(self.example)
        self.params_initial = self.model.param_count()
        self._describe(force=True)

    def watch(self) -> None:
        """Before a batch's forward: once per boundary while a seed trains isolated, watch that batch's backward
        with the isolation monitor (Tolaria watches one step per epoch the same way)."""
        training = any(s.isolated and s.stage is SeedStage.TRAINING for s in self.model.slots.values())
        if self._monitor is None and not self._watched and training:
            self._monitor = GradientIsolationMonitor(self.model).__enter__()
            self._watched = True

    def train_batch(self, batch: Batch) -> None:
        """After the loop's backward on ``batch``: close the monitor, give each isolated TRAINING seed its
        gradient at full weight (a joint one has its gradient from the loop's own backward already)."""
        if self._monitor is not None:
            self._monitor.__exit__(None, None, None)
            self._violations += self._monitor.violations
            self._monitor = None
        x, y = batch
        for slot_id, slot in self.model.slots.items():
            if slot.stage is not SeedStage.TRAINING or slot.seed is None:
                continue
            params = [p for p in slot.seed.parameters() if p.requires_grad]
            if slot.isolated:
                with torch.enable_grad(), self.model.alpha_override(slot_id, 1.0):
                    loss = self.loss(self.model(x), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for param, grad in zip(params, grads, strict=True):
                    param.grad = grad
            else:
                grads = tuple(p.grad for p in params)
            norms = [g.norm() for g in grads if g is not None]
            if norms:
                self._seed_norms.setdefault(slot_id, []).append(float(torch.linalg.vector_norm(torch.stack(norms))))

    @torch.no_grad()
    def boundary(
        self, val_batches: Iterable[Batch], *, train_loss: float, train_score: float, learning_rate: float, step: int
    ) -> Changes:
        """End a validation: measure, publish signals, decide, apply, end the epoch; returns optimizer changes."""
        started = time.perf_counter()
        batches = list(val_batches)
        self.epoch += 1
        val_loss, val_score = self._evaluate(batches)
        self._measure(batches, val_loss, val_score)
        tracked = self.tracker.update(
            epoch=self.epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            train_accuracy=train_score,
            val_accuracy=val_score,
        )
        signals = tracked.signals(
            step=step,
            params_total=self.model.param_count(),
            seeds=self.model.reports(),
            learning_rate=learning_rate,
            epoch_seconds=time.perf_counter() - started,
        )
        self.publish(signals)
        snapshot = run_snapshot(
            self.run_id, signals, graph=self.graph, telemetry_at=time.time(), param_budget=self.param_budget
        )
        changes = Changes()
        for decided in decide_boundary(self.policy, signals, snapshot, self.safety, graph=self.graph):
            self.publish(decided.decision)
            if decided.command is not None:
                self.publish(self._apply(decided.command, changes, batches))
                self._transitions()
        self.model.end_epoch(self.epoch)
        self._transitions()
        self._describe()
        self._seed_norms.clear()
        self._watched = False
        return changes

    def export(self) -> nn.Module:
        """The grown network as a plain module (fossilized and blending seeds merged), checked on the probe batch."""
        if self.example is None:
            raise ValueError("export: the session never saw a batch (call probe first)")
        return export(self.model, example_inputs=(self.example,))

    def report(self) -> dict[str, Any]:
        """A summary like Tolaria's ``report.json``: parameters, seed events, the validation curve."""
        history = [m for m in self.messages if isinstance(m, TrainingSignals)]
        return {
            "policy": getattr(self.policy, "name", type(self.policy).__name__),
            "epochs": self.epoch,
            "params_initial": self.params_initial,
            "params_final": self.model.param_count(),
            "final_val_accuracy": history[-1].val_accuracy if history else None,
            "best_val_accuracy": max((h.val_accuracy for h in history), default=None),
            "isolation_violations": self._violations,
            "seed_events": [
                {
                    "epoch": e.epoch,
                    "slot": e.slot_id,
                    "blueprint": e.blueprint,
                    "from": SeedStage(e.from_stage).name,
                    "to": SeedStage(e.to_stage).name,
                    "reason": e.reason,
                }
                for e in self.model.events
            ],
            "history": [{"epoch": h.epoch, "val_loss": h.val_loss, "val_accuracy": h.val_accuracy} for h in history],
            "wall_seconds": time.perf_counter() - self._started,
        }

    # -- checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed loop needs: slots' lifecycle and seed weights, tracker, policy, the probe batch."""
        return {
            "lifecycle": lifecycle_state(self.model),
            "slots": {k: v.detach().cpu() for k, v in self.model.slots.state_dict().items()},
            "tracker": self.tracker.state_dict(),
            "policy": self.policy.state_dict(),
            "epoch": self.epoch,
            "params_initial": self.params_initial,
            "example": self.example.cpu() if self.example is not None else None,
            "graph_revision": self.graph.revision if self.graph is not None else -1,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a fresh session over the same host (seeds on the host's device)."""
        restore_lifecycle(self.model, state["lifecycle"])
        self.model.slots.load_state_dict(state["slots"])
        self.tracker.load_state_dict(state["tracker"])
        self.policy.load_state_dict(state["policy"])
        self.epoch, self.params_initial = int(state["epoch"]), int(state["params_initial"])
        self._events_seen = len(self.model.events)  # published before the checkpoint
        if state["example"] is not None:
            anchor = next(iter(self.model.host.parameters()), None)
            self.example = state["example"].to(anchor.device if anchor is not None else "cpu")
            self.graph = None
            self._describe(force=True, revision=int(state["graph_revision"]) + 1)

    # -- inside a boundary -----------------------------------------------------
    def _evaluate(self, batches: list[Batch]) -> tuple[float, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            loss = score = 0.0
            n = 0
            for x, y in batches:
                out = self.model(x)
                loss += float(self.loss(out, y)) * len(y)
                score += float(self.score(out, y))
                n += len(y)
        finally:
            self.model.train(was_training)
        return loss / max(n, 1), score / max(n, 1)

    def _measure(self, batches: list[Batch], val_loss: float, val_score: float) -> None:
        for slot_id, slot in self.model.slots.items():
            if slot.stage not in MEASURED:
                continue
            with self.model.seed_disabled(slot_id):
                without = self._evaluate(batches)
            with self.model.alpha_override(slot_id, 1.0):
                full = self._evaluate(batches)
            current = full if slot.stage is SeedStage.TRAINING else (val_loss, val_score)
            norms = self._seed_norms.get(slot_id, [])
            self.model.record_metrics(
                slot_id,
                improvement=without[0] - full[0],
                contribution=current[1] - without[1],
                contribution_loss=without[0] - current[0],
                seed_grad_norm=sum(norms) / len(norms) if norms else None,
                isolation_violations=self._violations,
            )
        self._violations = 0

    def _apply(self, command: AdaptationCommand, changes: Changes, batches: list[Batch]) -> CommandResult:
        slot_id = command.slot_id
        assert slot_id is not None
        reason = command.reason or command.action.value
        try:
            if command.action is CommandAction.GERMINATE:
                assert command.blueprint is not None
                self.model.germinate(
                    slot_id, command.blueprint, command.blueprint_config, epoch=self.epoch, reason=reason
                )
                changes.added[slot_id] = self.model.seed_parameters(slot_id)
            elif command.action in (CommandAction.ADVANCE, CommandAction.FOSSILIZE):
                self.model.advance(slot_id, epoch=self.epoch, reason=reason)
            elif command.action is CommandAction.CULL:
                seed = self.model.slot(slot_id).seed
                changes.removed[slot_id] = list(seed.parameters()) if seed is not None else []
                # as Tolaria does: the host is put back only where that does better on validation
                self.model.cull(slot_id, epoch=self.epoch, reason=reason, val_loss=lambda: self._evaluate(batches)[0])
            else:
                raise ValueError(f"field 'action': {command.action.value!r} is not applied by a growth session")
            status = CommandStatus.APPLIED
        except ValueError as exc:  # a failing gate or an illegal transition: refused, training goes on
            status, reason = CommandStatus.REJECTED, str(exc)
        return CommandResult(
            command_id=command.command_id,
            action=command.action,
            status=status,
            slot_id=slot_id,
            epoch=self.epoch,
            reason=reason,
        )

    def _transitions(self) -> None:
        for event in self.model.events[self._events_seen :]:
            self.publish(event)
        self._events_seen = len(self.model.events)

    def _describe(self, *, force: bool = False, revision: int | None = None) -> None:
        key = tuple((sid, s.seed_id if s.seed is not None else None) for sid, s in self.model.slots.items())
        if (force or key != self._graph_key) and self.example is not None:
            if revision is None:
                revision = 0 if self.graph is None else self.graph.revision + 1
            self.graph = describe(self.model, self.example, epoch=self.epoch, revision=revision)
            self._graph_key = key
            self.publish(self.graph)
