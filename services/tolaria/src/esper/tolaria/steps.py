"""Training steps: one epoch of optimizer steps in the mode the slots' stages call for.

Stages change only at epoch boundaries, so everything a step needs to know
about the slots (the training mode, which seeds are isolated, which optimizers
step over which parameters) is worked out once per epoch in a :class:`StepPlan`.
The hot path then holds only what a plain PyTorch loop does plus the governor's
check: one host sync per step (``loss.item()``, which the governor must judge
before the step is taken); gradient norms and loss sums stay on the device
until the end of the epoch, and the training score is computed over many steps'
outputs at once (:class:`DeferredScore`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from esper.kasmina import GradientIsolationMonitor, MorphogeneticModel
from esper.kasmina.blueprints.init import gradmax_
from esper.leyline import SeedStage
from esper.tolaria.distributed import DataParallel
from esper.tolaria.governor import Governor, Trip
from esper.tolaria.modes import STEPPED_STAGES, TrainingMode, training_mode
from esper.tolaria.objective import CLASSIFICATION, Objective
from esper.tolaria.precision import Autocast

if TYPE_CHECKING:
    from esper.tolaria.trainer import Trainer


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What every step of one epoch does, fixed by the slots' stages at the epoch's start.

    ``stepped`` maps optimizer names (``"host"``, slot ids) to the parameters
    clipped before that optimizer steps; ``isolated`` lists the TRAINING seeds
    that learn from an extra pass at alpha 1 (empty when ``isolated_seed_pass``
    is off: they then follow the straight-through gradient alone).
    """

    mode: TrainingMode
    isolated: tuple[str, ...]
    stepped: dict[str, list[torch.nn.Parameter]]


@dataclass(slots=True)
class EpochOutcome:
    """Means over the epoch's steps (NaN when no step ran), modes counted, and the trip that stopped it."""

    loss: float
    accuracy: float
    modes: dict[str, int]
    trip: Trip | None
    norms: dict[str, float]


class DeferredScore:
    """An epoch's summed training score (correct predictions, or R²), computed a few times an epoch.

    Scoring every step costs four small operations per step (argmax, compare,
    sum, add), which on a small model is a visible share of the step. The steps'
    outputs are kept instead (detached: no graph stays alive) and scored together
    once ``limit`` values are held, and at the end; in float64, so counts are exact
    and R² sums carry no float32 rounding.
    """

    def __init__(self, objective: Objective, limit: int = 1 << 20) -> None:
        self.objective, self.limit = objective, limit
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.held = 0
        self.sum = 0.0

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.outputs.append(output.detach())
        self.targets.append(target)
        self.held += output.numel()
        if self.held >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.outputs:
            outputs, targets = torch.cat(self.outputs).double(), torch.cat(self.targets)
            self.sum += float(self.objective.score_sum(outputs, targets))
            self.outputs, self.targets, self.held = [], [], 0

    def total(self) -> float:
        self.flush()
        return self.sum


def host_only_parameters(model: MorphogeneticModel, separate: Collection[str]) -> list[torch.nn.Parameter]:
    """What the ``"host"`` optimizer steps: every parameter of ``model`` except those of the seeds
    in ``separate`` (the slots whose seed has an optimizer of its own), in ``model.parameters()`` order."""
    seeds = {
        id(p)
        for slot_id, slot in model.slots.items()
        if slot_id in separate and slot.seed is not None
        for p in slot.seed.parameters()
    }
    return [p for p in model.parameters() if id(p) not in seeds]


#: Training rows (the first ones) whose gradient a GERMINATED seed's GradMax initialization reads.
GRADMAX_ROWS = 512


def init_germinated_seeds(trainer: Trainer) -> list[str]:
    """GradMax for every GERMINATED seed: its first layer along the directions that make its
    zero last layer's gradient largest (:func:`esper.kasmina.blueprints.init.gradmax_`).

    A GERMINATED seed neither trains nor touches the forward value, so it is
    (re)initialized at the start of each epoch it spends there, from the host as
    it is then and the first :data:`GRADMAX_ROWS` training rows: a function of
    the run's state only, so a resumed run does the same. Its last layer stays
    zero (the seed is still the identity). Returns the slots it initialized.
    """
    model = trainer.model
    germinated = {
        sid: slot
        for sid, slot in model.slots.items()
        if SeedStage(slot.stage) is SeedStage.GERMINATED and slot.seed is not None
    }
    if not germinated:
        return []
    captured: dict[str, torch.Tensor] = {}
    handles = [
        slot.target.register_forward_hook(lambda _m, _i, out, sid=sid: captured.__setitem__(sid, out))
        for sid, slot in germinated.items()
    ]
    train = trainer.task.train
    try:
        loss = trainer.task.objective.loss(model(train.x[:GRADMAX_ROWS]), train.y[:GRADMAX_ROWS])
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(loss, [captured[sid] for sid in germinated])
    return [
        sid
        for (sid, slot), grad in zip(germinated.items(), grads, strict=True)
        if gradmax_(slot.seed, captured[sid].detach(), grad)  # type: ignore[arg-type]
    ]


def merge_fossilized_optimizers(trainer: Trainer) -> list[str]:
    """Hand each fossilized seed's parameters, with their Adam state, to the host optimizer.

    A fossilized seed is part of the host from then on: one optimizer with one
    clipping norm over both is what training the final architecture statically
    does, and each step then runs one optimizer step and one clip instead of
    one per fossilized seed more. The governor's snapshot is retaken (the state
    is the boundary's; only the optimizers' structure changed) so that a
    rollback restores into the merged optimizer. Returns the merged slot ids.
    """
    merged = [
        sid
        for sid in trainer.optimizers
        if sid != "host" and SeedStage(trainer.model.slots[sid].stage) is SeedStage.FOSSILIZED
    ]
    if not merged:
        return []
    previous = [trainer.optimizers.pop(sid) for sid in merged] + [trainer.optimizers["host"]]
    host = trainer.new_host_optimizer()
    for optimizer in previous:
        for param, state in optimizer.state.items():
            host.state[param] = state
    trainer.optimizers["host"] = host
    trainer.governor.take_snapshot(trainer.epoch, trainer.model, trainer.optimizers)
    return merged


def plan_epoch(
    model: MorphogeneticModel,
    optimizers: dict[str, torch.optim.Optimizer],
    host_parameters: list[torch.nn.Parameter],
    *,
    isolated_seed_pass: bool = True,
) -> StepPlan:
    """The :class:`StepPlan` for ``model``'s stages now."""
    stages = {sid: SeedStage(slot.stage) for sid, slot in model.slots.items()}
    isolated = tuple(
        sid for sid, st in stages.items() if st is SeedStage.TRAINING and model.slots[sid].isolate and sid in optimizers
    )
    stepped: dict[str, list[torch.nn.Parameter]] = {"host": host_parameters}
    for sid, stage in stages.items():
        if stage in STEPPED_STAGES and sid in optimizers:
            stepped[sid] = list(model.slots[sid].seed.parameters())  # type: ignore[union-attr]
    # A joint TRAINING seed (KasminaConfig.isolate_seeds off) is in the forward value, as a blending one is.
    mode = training_mode(
        SeedStage.BLENDING if st is SeedStage.TRAINING and not model.slots[sid].isolate else st
        for sid, st in stages.items()
    )
    return StepPlan(mode, isolated if isolated_seed_pass else (), stepped)


def train_step(
    model: MorphogeneticModel,
    optimizers: dict[str, torch.optim.Optimizer],
    plan: StepPlan,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    governor: Governor,
    grad_clip: float,
    monitor: GradientIsolationMonitor | None = None,
    objective: Objective = CLASSIFICATION,
    parallel: DataParallel | None = None,
    autocast: Autocast = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, float, Trip | None, dict[str, torch.Tensor]]:
    """One step on the batch ``x`` (N, ...), ``y`` (N,): forward, governor check, backward, clip, step.

    Returns ``(logits, loss, loss_value, trip, grad_norms)``; on a trip nothing is
    stepped (and, outside a monitored step, nothing is back-propagated).
    ``monitor`` (entered by the caller) watches this step's backward for
    isolation violations: the backward then runs before the governor's check.
    With ``parallel`` the batch is this rank's shard: the governor judges the
    global batch's loss, and gradients are all-reduced before clipping.
    ``autocast`` is entered around the forward passes and their losses (the run's precision).
    """
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    with autocast():
        logits = model(x)
        loss = objective.loss(logits, y)
    if monitor is not None:
        loss.backward()
    value = loss.item()  # the one host sync per step: the governor judges the loss before the step
    if parallel is not None:
        value = parallel.mean_loss(value, len(y))
    trip = governor.check(value)
    if trip is not None:
        return logits, loss, value, trip, {}
    if monitor is None:
        loss.backward()
    if plan.isolated:
        isolated_seed_gradients(model, x, y, plan.isolated, objective, autocast)
    if parallel is not None:
        parallel.reduce_gradients([p for params in plan.stepped.values() for p in params], len(y))
    norms = {}
    for name, params in plan.stepped.items():
        with_grad = [p for p in params if p.grad is not None]
        if with_grad:
            norms[name] = torch.nn.utils.clip_grad_norm_(with_grad, grad_clip, foreach=True)
        optimizers[name].step()
    return logits, loss, value, None, norms


def isolated_seed_gradients(
    model: MorphogeneticModel,
    x: torch.Tensor,
    y: torch.Tensor,
    slot_ids: tuple[str, ...],
    objective: Objective = CLASSIFICATION,
    autocast: Autocast = nullcontext,
) -> None:
    """Replace each isolated seed's gradient by that of the loss with the seed at alpha 1.

    The straight-through path gives a TRAINING seed dL/dh, which does not depend on
    the seed's own output, so a seed following it alone drifts without bound (its
    measured improvement only falls). Here the seed learns from its real effect on
    the loss while the host stays frozen: the gradient is taken w.r.t. the seed's
    parameters only, and the seed reads detached host features, so nothing reaches
    the host. Costs one extra forward and backward per isolated seed per step.
    """
    for slot_id in slot_ids:
        params = list(model.slots[slot_id].seed.parameters())  # type: ignore[union-attr]
        with model.alpha_override(slot_id, 1.0), autocast():
            loss = objective.loss(model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad


def epoch_batches(trainer: Trainer, steps: int | None = None) -> list[torch.Tensor]:
    """The row indexes of this epoch's batches: the next ``steps`` (default ``trainer.steps_per_epoch()``)
    batches of a shuffled pass over the training split, a new permutation (from the trainer's data
    generator) starting each pass.

    With the default epoch (one pass) every epoch is one permutation; shorter or longer epochs cut the same
    sequence of batches elsewhere. Where the pass stands lives in ``trainer.data_order`` and
    ``trainer.data_batch`` (checkpointed).
    """
    n, size = len(trainer.task.train), trainer.config.batch_size
    per_pass = math.ceil(n / size)
    batches = []
    for _ in range(trainer.steps_per_epoch() if steps is None else steps):
        if trainer.data_order is None or trainer.data_batch >= per_pass:
            trainer.data_order, trainer.data_batch = torch.randperm(n, generator=trainer.generator), 0
        start = trainer.data_batch * size
        batches.append(trainer.data_order[start : start + size])
        trainer.data_batch += 1
    return batches


def train_epoch(trainer: Trainer, count: int | None = None) -> EpochOutcome:
    """All training steps of one epoch of ``trainer`` (``count`` of them, default ``trainer.steps_per_epoch()``:
    more when a round spans several epochs); stops at the first step the governor trips on."""
    model, cfg = trainer.model, trainer.config
    objective = trainer.task.objective
    model.train()
    if cfg.seed_init == "gradmax":
        init_germinated_seeds(trainer)
    if cfg.merge_fossilized:
        merge_fossilized_optimizers(trainer)
    plan = plan_epoch(model, trainer.optimizers, trainer.host_parameters(), isolated_seed_pass=cfg.isolated_seed_pass)
    modes: Counter[str] = Counter()
    norm_sums: dict[str, torch.Tensor] = {}
    loss_sum, score = 0.0, DeferredScore(objective)
    seen = steps = violations = 0
    # one monitored step per epoch proves isolation, also while another seed blends (BLENDED mode)
    monitored = not any(slot.isolated and slot.stage is SeedStage.TRAINING for slot in model.slots.values())
    trip = None
    train = trainer.task.train
    for index in epoch_batches(trainer, count):
        index = index.to(train.x.device, non_blocking=True)  # the data order is drawn on the CPU (checkpointed)
        x, y = train.x[index], train.y[index]
        if trainer.parallel is not None:
            x, y = trainer.parallel.shard(x, y)
        modes[plan.mode.value] += 1
        trainer.set_lr()
        if not monitored:
            with GradientIsolationMonitor(model) as monitor:
                logits, _, value, trip, norms = train_step(
                    model, trainer.optimizers, plan, x, y, governor=trainer.governor, grad_clip=cfg.grad_clip,
                    monitor=monitor, objective=objective, parallel=trainer.parallel, autocast=trainer.autocast,
                )  # fmt: skip
            violations += monitor.violations
            monitored = True
        else:
            logits, _, value, trip, norms = train_step(
                model, trainer.optimizers, plan, x, y, governor=trainer.governor, grad_clip=cfg.grad_clip,
                objective=objective, parallel=trainer.parallel, autocast=trainer.autocast,
            )  # fmt: skip
        if trip is not None:
            break
        trainer.step += 1
        steps += 1
        for name, norm in norms.items():
            norm_sums[name] = norm_sums[name] + norm if name in norm_sums else norm
        loss_sum += value * len(y)
        score.add(logits, y)
        seen += len(y)
    if trainer.parallel is not None:  # the epoch's sums over every rank's shards
        loss_sum, correct, seen_all = trainer.parallel.sums(loss_sum, score.total(), seen)
        seen = int(seen_all)
    else:
        correct = score.total()
    means = {name: float(total) / max(steps, 1) for name, total in norm_sums.items()}
    means["isolation_violations"] = violations
    if seen == 0:
        return EpochOutcome(math.nan, math.nan, dict(modes), trip, means)
    return EpochOutcome(loss_sum / seen, correct / seen, dict(modes), trip, means)
