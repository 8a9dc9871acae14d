"""What the growth and overhead benchmarks train: Tolaria runs, the oracle of a grown run, a bare loop.

Not a script: ``growth.py`` and ``tolaria_overhead.py`` import it (both run from
``benchmarks/``, which Python puts first on the path).

* :func:`tolaria_run` drives a :class:`Trainer` the way ``esper.tolaria.runs.run``
  does (events to ``events.jsonl``, a checkpoint every ``checkpoint_every`` passes
  epochs and after the last), without the end-of-run plot, and counts training
  FLOPs off the clock.
* :func:`oracle_host` turns a grown model into the static network a user would
  train from scratch: ``esper.kasmina.export``, every parameter re-initialized.
* :func:`bare_run` is a plain PyTorch loop, no Esper: same data, data order,
  model, Adam, gradient clipping, schedule and per-epoch evaluation.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina import KasminaConfig, MorphogeneticModel, export
from esper.leyline import SeedStage
from esper.tolaria.checkpoint import save_checkpoint
from esper.tolaria.config import TrainerConfig, reaches_multiple, seed_everything
from esper.tolaria.device import resolve_device
from esper.tolaria.governor import Governor, GovernorConfig
from esper.tolaria.report import EVENTS_NAME, EventLog
from esper.tolaria.schedule import lr_factor
from esper.tolaria.steps import host_only_parameters, plan_epoch, train_step
from esper.tolaria.tasks import Task
from esper.tolaria.trainer import Trainer

PolicyFactory = Callable[[MorphogeneticModel], Any]


@dataclass(slots=True)
class ArmRun:
    """One training's outcome; ``seconds`` (wall) and ``cpu_seconds`` (this process) exclude FLOP counting."""

    final_val_accuracy: float
    final_test_accuracy: float
    best_val_accuracy: float
    params_final: int
    seconds: float
    cpu_seconds: float
    train_flops: int
    seed_events: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def warm_up() -> None:
    """Pay a process's one-time costs before any arm is timed.

    The first ``torch.optim.Adam`` a process builds imports ``torch._dynamo``
    (seconds of CPU), and the first FLOP count loads its op tables: without this
    the first arm a worker trains would carry them and the next one would not.
    """
    layer = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    module_step_flops(layer, torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    F.cross_entropy(layer(torch.zeros(3, 4)), torch.zeros(3, dtype=torch.long)).backward()
    optimizer.step()


# -- FLOPs ---------------------------------------------------------------------
def _architecture_key(trainer: Trainer) -> tuple[Any, ...]:
    """What decides a training step's FLOPs: each slot's stage and seed, and the isolated pass."""
    slots = tuple(
        (sid, SeedStage(s.stage).name, s.blueprint, tuple(sorted(s.blueprint_config.items())))
        for sid, s in trainer.model.slots.items()
    )
    return (*slots, trainer.config.isolated_seed_pass)


def step_flops(trainer: Trainer) -> int:
    """FLOPs of one training step of ``trainer`` now, counted on a copy (the run is untouched)."""
    model, optimizers = copy.deepcopy((trainer.model, trainer.optimizers))
    plan = plan_epoch(
        model,
        optimizers,
        host_only_parameters(model, set(optimizers) - {"host"}),
        isolated_seed_pass=trainer.config.isolated_seed_pass,
    )
    n = trainer.config.batch_size
    x, y = trainer.task.train.x[:n], trainer.task.train.y[:n]
    governor = Governor(GovernorConfig(enabled=False))
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizers, plan, x, y, governor=governor, grad_clip=trainer.config.grad_clip)
    return int(counter.get_total_flops())


def module_step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward and backward of a plain module on ``x``, ``y`` (on a copy)."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


# -- Tolaria --------------------------------------------------------------------
def tolaria_run(
    task: Task,
    config: TrainerConfig,
    out_dir: Path,
    *,
    kasmina: KasminaConfig | None = None,
    policy: PolicyFactory | None = None,
    param_budget: int | None = None,
    on_trainer: Callable[[Trainer], None] | None = None,
) -> tuple[Trainer, ArmRun]:
    """Train ``task`` with Tolaria as ``esper train`` does; ``policy(model)`` builds the in-process policy.

    ``on_trainer`` sees the trainer before the first epoch (ablations hook it there).
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    off_clock = off_cpu = 0.0
    log = EventLog(out_dir / EVENTS_NAME)
    trainer = Trainer(task, None, config, kasmina=kasmina, sinks=(log,), param_budget=param_budget)
    trainer.policy = policy(trainer.model) if policy is not None else None
    if on_trainer is not None:
        on_trainer(trainer)
    flops_per_step: dict[tuple[Any, ...], int] = {}
    steps_per_key: dict[tuple[Any, ...], int] = {}
    try:
        while trainer.epoch < config.epochs and not trainer.stop_requested:
            key = _architecture_key(trainer)
            if key not in flops_per_step:
                t0, c0 = time.perf_counter(), time.process_time()
                flops_per_step[key] = step_flops(trainer)
                off_clock += time.perf_counter() - t0
                off_cpu += time.process_time() - c0
            step_before = trainer.step
            record = trainer.run_epoch()
            steps_per_key[key] = steps_per_key.get(key, 0) + trainer.step - step_before
            # checkpoint_every counts passes over the data: short epochs do not multiply checkpoints
            every = config.checkpoint_every * trainer.epochs_per_pass()
            if reaches_multiple(trainer.epoch, record.span, every) or trainer.epoch == config.epochs:
                save_checkpoint(trainer, out_dir, meta={})
    finally:
        log.close()
    seconds = time.perf_counter() - started - off_clock
    cpu_seconds = time.process_time() - cpu_started - off_cpu
    history = trainer.history
    final = history[-1]
    events = [
        f"e{e.epoch} {e.slot_id} {e.blueprint} {SeedStage(e.to_stage).name}"
        for e in trainer.model.events
        if SeedStage(e.to_stage) in (SeedStage.GERMINATED, SeedStage.FOSSILIZED, SeedStage.CULLED)
    ]
    return trainer, ArmRun(
        final_val_accuracy=final.val_accuracy,
        final_test_accuracy=final.test_accuracy,
        best_val_accuracy=max(r.val_accuracy for r in history),
        params_final=trainer.model.param_count(),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        train_flops=sum(flops_per_step[k] * n for k, n in steps_per_key.items()),
        seed_events=events,
        extra={"rollback_epochs": [r.epoch for r in history if r.rolled_back], "boundaries": len(history)},
    )


# -- the oracle ------------------------------------------------------------------
def reinitialize(module: nn.Module) -> nn.Module:
    """Re-draw every parameter the way a user building this network would: each layer's own init."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset) and sub is not module:
            reset()
    return module


def oracle_host(grown: MorphogeneticModel, *, zero_seed_outputs: bool = False) -> Callable[[], nn.Module]:
    """A ``build_host`` for the grown model's final architecture, trained from scratch.

    The architecture is ``export(grown)`` (fossilized seeds merged, everything
    else dropped). Each call re-initializes a copy of it with PyTorch's layer
    defaults, under whatever RNG state the caller set (the trainer seeds it).
    ``zero_seed_outputs`` then zeroes the last layer of every merged seed, as
    Kasmina initializes a fresh seed (the ablation that separates the
    initialization from growing).
    """
    exported = export(grown)
    seed_modules = [
        f"{slot.module_name}.1"
        for slot in grown.slots.values()
        if slot.seed is not None and SeedStage(slot.stage) is SeedStage.FOSSILIZED
    ]

    def build() -> nn.Module:
        model = reinitialize(copy.deepcopy(exported))
        if zero_seed_outputs:
            for name in seed_modules:
                last = [m for m in model.get_submodule(name).modules() if list(m.parameters(recurse=False))][-1]
                with torch.no_grad():
                    for p in last.parameters(recurse=False):
                        p.zero_()
        return model

    return build


def blend_steps(grown: Trainer) -> dict[str, int]:
    """For each fossilized seed of a grown run, by its module's name in ``export`` of the model: the training
    step from which it reached the forward (its BLENDING transition; before it the seed was absent or
    isolated, and the network computed the host's function)."""
    step_after = {record.epoch: record.step for record in grown.history}
    fossilized = {
        sid: f"{slot.module_name}.1"
        for sid, slot in grown.model.slots.items()
        if slot.seed is not None and SeedStage(slot.stage) is SeedStage.FOSSILIZED
    }
    steps: dict[str, int] = {}
    for event in grown.model.events:  # the last blending of the slot is the seed that was kept
        if event.slot_id in fossilized and SeedStage(event.to_stage) is SeedStage.BLENDING:
            steps[fossilized[event.slot_id]] = step_after.get(event.epoch, 0)
    return steps


def late_seeds(steps: dict[str, int]) -> Callable[[Trainer], None]:
    """An ``on_trainer`` hook for an oracle run: each merged seed (module names from :func:`blend_steps`)
    is absent until the trainer reaches its step: its last layer outputs zeros, so its residual branch adds
    nothing and none of its layers gets a gradient (exact for residual blueprints whose last layer's output
    is added to the host's features, as every conv and dense blueprint's is).

    The oracle then has the grown run's timing (each seed joins when it did in the grown run) and
    everything else of training from scratch (PyTorch's init, one optimizer, no isolation, no blend ramp).
    """

    def hook(trainer: Trainer) -> None:
        host = trainer.model.host
        for name, step in steps.items():
            last = [m for m in host.get_submodule(name).modules() if list(m.parameters(recurse=False))][-1]
            last.register_forward_hook(
                lambda _m, _inputs, output, step=step: torch.zeros_like(output) if trainer.step < step else output
            )

    return hook


def oracle_task(task: Task, build_host: Callable[[], nn.Module]) -> Task:
    """``task`` with a fixed host and no slots (a static run of that host)."""
    return replace(task, build_host=build_host, slots={})


# -- the bare loop -----------------------------------------------------------------
@torch.no_grad()
def _accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for start in range(0, len(y), batch):
        logits = model(x[start : start + batch])
        loss += F.cross_entropy(logits, y[start : start + batch], reduction="sum")
        correct += (logits.argmax(dim=1) == y[start : start + batch]).sum()
    model.train()
    return int(correct) / len(y), float(loss) / len(y)


def bare_run(task: Task, config: TrainerConfig) -> ArmRun:
    """A plain PyTorch loop over ``task``'s host: no Esper in the loop, the trainer's recipe.

    Same seeding, host, data order, Adam, clipping at ``grad_clip``, learning-rate
    schedule, and the same per-epoch evaluation of the validation and test splits.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    device = resolve_device(config.device)  # where the trainer's arms train too
    task = task.to(device)
    seed_everything(config.seed)
    model = task.build_host().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    train = task.train
    n, batch = len(train), config.batch_size
    total_steps = config.epochs * math.ceil(n / batch)
    step, best_val = 0, 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    flops = module_step_flops(model, train.x[:batch], train.y[:batch])
    counted, counted_cpu = time.perf_counter() - t0, time.process_time() - c0
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        train_loss = torch.zeros((), device=device)
        for start in range(0, n, batch):
            index = order[start : start + batch].to(device, non_blocking=True)
            x, y = train.x[index], train.y[index]
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config.lr_schedule, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
            optimizer.step()
            train_loss += loss.detach() * len(y)
            step += 1
        val_acc, _ = _accuracy_and_loss(model, task.val.x, task.val.y, config.eval_batch_size)
        test_acc, _ = _accuracy_and_loss(model, task.test.x, task.test.y, config.eval_batch_size)
        best_val = max(best_val, val_acc)
        float(train_loss)  # the epoch's one sync, as a loop that logs its training loss has
    seconds = time.perf_counter() - started - counted
    cpu_seconds = time.process_time() - cpu_started - counted_cpu
    return ArmRun(
        final_val_accuracy=val_acc,
        final_test_accuracy=test_acc,
        best_val_accuracy=best_val,
        params_final=sum(p.numel() for p in model.parameters()),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        train_flops=flops * step,
        extra={"flop_counting_seconds": round(counted, 3)},
    )


# -- seed initialization ablations ----------------------------------------------------
def chain_hooks(*hooks: Callable[[Trainer], None] | None) -> Callable[[Trainer], None] | None:
    """One ``on_trainer`` hook calling each of ``hooks`` that is not None, in order (None if none is)."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None

    def hook(trainer: Trainer) -> None:
        for h in present:
            h(trainer)

    return hook


def default_init_hook() -> Callable[[Trainer], None]:
    """An ``on_trainer`` hook: each new seed's last layer drawn by PyTorch at germination (not the identity)."""

    def hook(trainer: Trainer) -> None:
        make_optimizer = trainer.new_seed_optimizer

        def new_seed_optimizer(params: list[Any]) -> Any:
            ids = {id(p) for p in params}
            for slot_id, slot in trainer.model.slots.items():
                if slot.seed is not None and ids & {id(p) for p in slot.seed.parameters()}:
                    default_init_last_layer(trainer, slot_id)
            return make_optimizer(params)

        trainer.new_seed_optimizer = new_seed_optimizer  # type: ignore[method-assign]

    return hook


def default_init_last_layer(trainer: Trainer, slot_id: str) -> None:
    """Draw the new seed's last layer with PyTorch's default init: the seed no longer starts as the identity."""
    seed = trainer.model.slots[slot_id].seed
    assert seed is not None
    layers = [m for m in seed.modules() if list(m.parameters(recurse=False))]
    layers[-1].reset_parameters()


# -- shrink and perturb ---------------------------------------------------------------
def shrink_perturb(model: nn.Module, shrink: float, noise: float) -> None:
    """Ash & Adams' shrink and perturb (NeurIPS 2020): every parameter ``p`` becomes ``shrink * p + noise * q``,
    ``q`` the same parameter of a freshly initialized copy (each layer's own init)."""
    fresh = reinitialize(copy.deepcopy(model))
    with torch.no_grad():
        for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
            p.mul_(shrink).add_(q, alpha=noise)


def shrink_perturb_once_grown(shrink: float, noise: float) -> Callable[[Trainer], None]:
    """An ``on_trainer`` hook: the first time the run is settled with a seed fossilized in every slot
    (growth has ended), shrink and perturb the whole network once, after that round."""

    def hook(trainer: Trainer) -> None:
        run_epoch = trainer.run_epoch
        done = False

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            record = run_epoch(*args, **kwargs)
            grown = all(SeedStage(s.stage) is SeedStage.FOSSILIZED for s in trainer.model.slots.values())
            if not done and grown and trainer.settled():
                shrink_perturb(trainer.model, shrink, noise)
                done = True
            return record

        trainer.run_epoch = wrapped  # type: ignore[method-assign]

    return hook
