"""Grow a network while it trains: the whole Esper loop in one file.

The MNIST-1D host (``ConvHost1D``, 858 parameters) gets three seed slots
(Kasmina's ``wrap``). Every epoch: train with a plain PyTorch loop, measure on
the validation split, describe the epoch as Leyline ``TrainingSignals``, let
the heuristic decide through Tamiyo's one decide step (policy -> safety monitor
-> command), carry the command out through Kasmina's lifecycle, end the epoch.
At the end the grown network is exported to a plain ``nn.Module``, saved,
reloaded, and checked against the model it came from.

What ``esper train`` does, minus its extras (governor rollbacks, checkpoints, the bus, reports). The
test split is evaluated for the record only; every decision reads the validation split.

    .venv/bin/python examples/grow_loop.py --epochs 30
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset
from torch.nn import functional as F

from esper.kasmina import ConvHost1D, KasminaConfig, MorphogeneticModel, export, wrap
from esper.kasmina.blueprints.init import gradmax_
from esper.kasmina.graph import describe
from esper.leyline import (
    MEASURED_STAGES,
    STEPPED_STAGES,
    AdaptationCommand,
    CommandAction,
    GateThresholds,
    SeedStage,
    TrainingJob,
    TrainingSignals,
)
from esper.tamiyo.decide import decide_boundary, run_snapshot
from esper.tamiyo.policies import DEFAULT_SAFETY, make_policy
from esper.tamiyo.safety import SafetyMonitor
from esper.tamiyo.tracker import SignalTracker

#: "train" / "val" / "test" -> inputs (N, 40) float32, labels (N,) int64
Data = dict[str, tuple[torch.Tensor, torch.Tensor]]
Optimizers = dict[str, torch.optim.Optimizer]  # "host" and one per live seed (by slot id)


@dataclass
class Args:
    epochs: int = 30  # the learning rate follows a cosine over all of them
    seed: int = 0  # seeds torch (weights, batch order); the data splits are fixed
    max_train_samples: int | None = None  # keep only the first N training rows (quick runs)
    batch_size: int = 100
    lr: float = 1e-2  # Adam's rate, for the host and for every seed
    grad_clip: float = 5.0
    val_fraction: float = 0.05  # share of the training rows carved off for validation (what decisions read)
    param_budget: int | None = None  # largest parameter count a germination may lead to (None: unlimited)
    export_path: str | None = None  # where the exported model is saved (default: a temporary folder)


def parse_args() -> Args:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0]]
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    args = Args(**vars(p.parse_args()))
    if args.epochs < 1 or (args.max_train_samples is not None and args.max_train_samples < 1):
        p.error(f"--epochs and --max-train-samples must be >= 1 (values {args.epochs}, {args.max_train_samples})")
    return args


def load_data(args: Args) -> Data:
    """MNIST-1D (generated locally, no download): train / validation (carved from train) / test."""
    data = make_dataset(get_dataset_args())
    order = np.random.default_rng(0).permutation(len(data["y"]))  # the split esper train uses
    n_val = max(1, round(len(order) * args.val_fraction))
    val, train = order[:n_val], order[n_val:][: args.max_train_samples]

    def split(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)

    return {
        "train": split(data["x"][train], data["y"][train]),
        "val": split(data["x"][val], data["y"][val]),
        "test": split(data["x_test"], data["y_test"]),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode."""
    was_training = model.training
    logits = model.eval()(x)
    model.train(was_training)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def structure(model: MorphogeneticModel) -> tuple[tuple[str, str | None], ...]:
    """What a ModelGraph depends on: which seed (if any) sits in each slot."""
    return tuple((sid, s.seed_id if s.seed is not None else None) for sid, s in model.slots.items())


def init_germinated(model: MorphogeneticModel, x: torch.Tensor, y: torch.Tensor) -> None:
    """GradMax, as Tolaria starts each epoch: a GERMINATED seed's first layer along the host's gradient at its
    slot on the first 512 training rows; its last layer stays zero, so the seed is still the identity."""
    germinated = {k: s for k, s in model.slots.items() if s.stage is SeedStage.GERMINATED and s.seed is not None}
    out: dict[str, torch.Tensor] = {}
    hooks = [
        s.target.register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o)) for k, s in germinated.items()
    ]
    if germinated:
        grads = torch.autograd.grad(F.cross_entropy(model(x[:512]), y[:512]), [out[k] for k in germinated])
        for (k, slot), grad in zip(germinated.items(), grads, strict=True):
            gradmax_(slot.seed, out[k].detach(), grad)
    for hook in hooks:
        hook.remove()


def train_epoch(
    model: MorphogeneticModel, optimizers: Optimizers, data: Data, args: Args, generator: torch.Generator, step: int
) -> tuple[float, float, dict[str, float], int]:
    """One epoch of steps; returns (train loss, train accuracy, gradient norms, step).

    The host optimizer steps every parameter no seed owns, a seed's optimizer
    its seed from TRAINING on: a TRAINING seed is in the forward at full weight
    and learns from the same backward as the host (Kasmina's default; with
    ``isolate_seeds`` esper train also runs an isolated pass, left out here).
    """
    x_all, y_all = data["train"]
    model.train()
    init_germinated(model, x_all, y_all)
    total_steps = args.epochs * math.ceil(len(y_all) / args.batch_size)
    stages = {sid: SeedStage(slot.stage) for sid, slot in model.slots.items()}
    seeds = {id(p) for s in model.slots.values() if s.seed is not None for p in s.seed.parameters()}
    stepped = {"host": [p for p in model.parameters() if id(p) not in seeds]}
    stepped |= {s: list(model.slots[s].seed.parameters()) for s in optimizers if stages.get(s) in STEPPED_STAGES}
    loss_sum, correct = 0.0, 0
    norms: dict[str, list[float]] = defaultdict(list)
    order = torch.randperm(len(y_all), generator=generator)
    for start in range(0, len(y_all), args.batch_size):
        x, y = x_all[order[start : start + args.batch_size]], y_all[order[start : start + args.batch_size]]
        for opt in optimizers.values():  # cosine learning rate over the whole run
            opt.zero_grad(set_to_none=True)
            for group in opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        for name, params in stepped.items():
            with_grad = [p for p in params if p.grad is not None]
            if with_grad:
                norms[name].append(float(torch.nn.utils.clip_grad_norm_(with_grad, args.grad_clip)))
            optimizers[name].step()
        step += 1
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
    mean_norms = {name: sum(v) / len(v) for name, v in norms.items()}
    return loss_sum / len(y_all), correct / len(y_all), mean_norms, step


def measure_seeds(model: MorphogeneticModel, data: Data, val: tuple[float, float], norms: dict) -> None:
    """Counterfactuals on the validation split: the same rows with each seed in and switched off."""
    x, y = data["val"]
    for sid, slot in model.slots.items():
        if SeedStage(slot.stage) not in MEASURED_STAGES:
            continue
        with model.seed_disabled(sid):
            without_loss, without_acc = evaluate(model, x, y)
        with model.alpha_override(sid, 1.0):
            full_loss, _ = evaluate(model, x, y)
        with_loss, with_acc = val  # every live seed is in the forward value (a TRAINING one at full weight)
        model.record_metrics(
            sid,
            improvement=without_loss - full_loss,
            contribution=with_acc - without_acc,
            contribution_loss=without_loss - with_loss,
            seed_grad_norm=norms.get(sid, 0.0),
            host_grad_norm=norms.get("host", 0.0),
        )


def apply(model: MorphogeneticModel, optimizers: Optimizers, command: AdaptationCommand, epoch: int, args: Args,
          val: tuple[torch.Tensor, torch.Tensor]) -> str:  # fmt: skip
    """A slot command through Kasmina's lifecycle (its gates may refuse); a cull restores the host only if that pays."""
    slot, reason = command.slot_id, command.reason
    try:
        if command.action is CommandAction.GERMINATE:
            model.germinate(slot, command.blueprint, command.blueprint_config, epoch=epoch, reason=reason)
            optimizers[slot] = torch.optim.Adam(model.seed_parameters(slot), lr=args.lr)
        elif command.action in (CommandAction.ADVANCE, CommandAction.FOSSILIZE):
            model.advance(slot, epoch=epoch, reason=reason)
        elif command.action is CommandAction.CULL:
            model.cull(slot, epoch=epoch, reason=reason, val_loss=lambda: evaluate(model, *val)[0])
            optimizers.pop(slot, None)
    except ValueError as exc:  # a failing gate or an illegal transition
        return f"refused by Kasmina: {exc}"
    return "applied"


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    data = load_data(args)
    x_train = data["train"][0]

    # -- the host, wrapped: three slots after the activations, Tolaria's lifecycle tempo (seeds joint, the default)
    kasmina = KasminaConfig(
        thresholds=GateThresholds(min_training_epochs=2, min_shadowing_epochs=1, min_probation_epochs=1),
        blend_epochs=3,
        embargo_epochs=3,
    )
    model = wrap(ConvHost1D(channels=8, num_classes=10, length=40), ConvHost1D.DEFAULT_SLOTS, config=kasmina)
    model.probe(x_train[:2])  # each slot learns its feature shape
    params_before = model.param_count()
    graph = describe(model, x_train[:2])  # what Tamiyo knows of the network: slots, shapes, priced blueprints
    graph_of = structure(model)

    # -- the controller: the default job's heuristic (once per slot), checked by the safety monitor as a service is
    job = TrainingJob(epochs=args.epochs, seed=args.seed, param_budget=args.param_budget)
    policy = make_policy(job.policy, job)
    safety = SafetyMonitor(DEFAULT_SAFETY)
    tracker = SignalTracker()

    optimizers = {"host": torch.optim.Adam(model.parameters(), lr=args.lr)}
    generator = torch.Generator().manual_seed(args.seed)
    step, tests, started = 0, [], time.perf_counter()
    print(f"data: train {len(x_train)}, validation {len(data['val'][1])}, test {len(data['test'][1])}")
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc, norms, step = train_epoch(model, optimizers, data, args, generator, step)
        val_loss, val_acc = evaluate(model, *data["val"])
        tests.append(evaluate(model, *data["test"])[1])  # for the record only: nothing below reads it
        measure_seeds(model, data, (val_loss, val_acc), norms)
        t = tracker.update(
            epoch=epoch, train_loss=train_loss, val_loss=val_loss, train_accuracy=train_acc, val_accuracy=val_acc
        )
        signals = TrainingSignals(
            epoch=epoch, step=step, train_loss=t.train_loss, val_loss=t.val_loss, train_accuracy=t.train_accuracy,
            val_accuracy=t.val_accuracy, loss_delta=t.loss_delta, accuracy_delta=t.accuracy_delta,
            plateau_epochs=t.plateau_epochs, best_val_loss=t.best_val_loss, best_val_accuracy=t.best_val_accuracy,
            params_total=model.param_count(), epoch_seconds=time.perf_counter() - t0, seeds=model.reports(),
        )  # fmt: skip

        # -- decide: policy -> safety monitor -> command (the step esper train and the Tamiyo service run)
        snapshot = run_snapshot(
            "grow-loop", signals, graph=graph, telemetry_at=time.time(), param_budget=job.param_budget
        )
        for decided in decide_boundary(policy, signals, snapshot, safety, graph=graph):  # one per slot at most
            d = decided.decision
            if decided.command is not None:
                outcome = apply(model, optimizers, decided.command, epoch, args, data["val"])
                what = " ".join(filter(None, (d.action.value, d.slot_id, d.blueprint)))
                print(f"  decision e{epoch}: {what} ({d.reason}) -> {outcome}")
            elif not d.accepted:
                print(f"  decision e{epoch}: {d.action.value} {d.slot_id} rejected by safety: {d.rejection_reason}")
        model.end_epoch(epoch)  # blending ramps, embargoes count down
        if structure(model) != graph_of:  # a seed was built, fossilized or removed: Tamiyo needs the new graph
            graph, graph_of = describe(model, x_train[:2], epoch=epoch, revision=graph.revision + 1), structure(model)

        stages = " ".join(f"{sid}:{SeedStage(s.stage).name.lower()}" for sid, s in model.slots.items())
        print(
            f"ep {epoch} loss {train_loss:.3f}/{val_loss:.3f} acc {100 * train_acc:.1f}/{100 * val_acc:.1f}% "
            f"test {100 * tests[-1]:.1f}% params {model.param_count()} {stages}"
        )

    # -- export: a plain nn.Module with the fossilized seeds merged in, saved and reloaded
    plain = export(model)
    path = Path(args.export_path or Path(tempfile.mkdtemp(prefix="grow_loop-")) / "model.pt")
    torch.save(plain, path)
    reloaded = torch.load(path, weights_only=False)
    with torch.no_grad():  # the same test inputs through the model, the exported module and the reloaded file
        x_test = data["test"][0]
        expected = model.eval()(x_test)
        diff_exported, diff_file = ((m.eval()(x_test) - expected).abs().max().item() for m in (plain, reloaded))

    print(f"run: task mnist1d, policy {policy.name}, seed {args.seed}, {args.epochs} epochs, "
          f"{time.perf_counter() - started:.1f} s, decided in-process")  # fmt: skip
    print(f"test accuracy: final {100 * tests[-1]:.2f}%, best {100 * max(tests):.2f}%")
    print(f"validation accuracy: final {100 * val_acc:.2f}%, best {100 * t.best_val_accuracy:.2f}%")
    print(f"parameters: {params_before} -> {model.param_count()}")
    print(f"seed events ({len(model.events)}):" if model.events else "seed events: none")
    for e in sorted(model.events, key=lambda e: list(model.slots).index(e.slot_id)):  # by slot, then in order
        what = e.slot_id + (f" {e.blueprint}" if e.blueprint else "")
        print(f"  {what}: epoch {e.epoch} {SeedStage(e.from_stage).name} -> {SeedStage(e.to_stage).name} ({e.reason})")
    print(f"export: {path} ({sum(p.numel() for p in reloaded.parameters())} parameters)")
    print(f"export max |diff| vs model: module {diff_exported:.3g}, file {diff_file:.3g}")


if __name__ == "__main__":
    main()
