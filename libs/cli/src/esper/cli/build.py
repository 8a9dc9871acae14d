"""Wiring one in-process run: task + Kasmina model + policy + Tolaria trainer + run record.

``esper train`` and ``benchmarks/growth.py`` both build runs here, so the
benchmark measures exactly what users run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from esper.kasmina import KasminaConfig, MorphogeneticModel, get_blueprint
from esper.leyline import GateThresholds, SeedStage
from esper.tamiyo.heuristic import BlueprintChoice, CostModel, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy
from esper.tolaria.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.report import EVENTS_NAME, EventLog, write_report
from esper.tolaria.tasks import load_task
from esper.tolaria.trainer import EpochRecord, Sink, Trainer, TrainerConfig

POLICIES = ("heuristic", "none")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything that defines a run (stored in its checkpoint, so ``--resume`` rebuilds the same run)."""

    task: str = "mnist1d"
    policy: str = "heuristic"
    epochs: int = 40
    seed: int = 0
    data_dir: str | None = None
    max_train_samples: int | None = None
    host_channels: int | None = None
    batch_size: int = 100
    lr: float = 1e-2
    lr_schedule: str = "cosine"
    param_budget: int | None = None
    spike_sigma: float = 6.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"field 'policy': unknown policy {self.policy!r} (known: {', '.join(POLICIES)})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Kasmina's lifecycle tempo for in-process runs: short isolated training, a quick blend.
KASMINA = KasminaConfig(
    thresholds=GateThresholds(min_training_epochs=2, min_shadowing_epochs=1, min_probation_epochs=1),
    blend_epochs=3,
    embargo_epochs=3,
)


def cost_model(model: MorphogeneticModel) -> CostModel:
    """Exact parameters a blueprint would add at a slot of ``model``, or None where it does not fit."""

    def cost(slot_id: str, blueprint: str, config: Mapping[str, Any]) -> int | None:
        slot = model.slot(slot_id)
        if slot.feature_shape is None:
            return None
        try:
            return get_blueprint(blueprint).param_count(slot.feature_shape, config, layer_kind=slot.layer_kind)
        except ValueError:
            return None

    return cost


def heuristic_config(spec: RunSpec) -> HeuristicConfig:
    """The heuristic's defaults: wide residual conv seeds, germinated early, one at a time, within the budget."""
    candidates = (
        BlueprintChoice("conv_heavy", {"kernel_size": 3, "expansion": 3.5}),
        BlueprintChoice("bottleneck", {"kernel_size": 3, "reduction": 2}),
        BlueprintChoice("conv_light", {"kernel_size": 3}),
    )
    return HeuristicConfig(
        plateau_patience=2,
        plateau_min_delta=0.005,
        min_epoch_to_germinate=2,
        max_active_seeds=1,
        slot_order=("s1", "s2", "s3"),
        candidates=candidates,
        param_budget=spec.param_budget,
        thresholds=KASMINA.thresholds,
    )


def make_policy(spec: RunSpec, model: MorphogeneticModel) -> Policy:
    """The policy ``spec`` names, wired to ``model``'s slots."""
    if spec.policy == "none":
        return StaticPolicy()
    return HeuristicTamiyo(heuristic_config(spec), cost_model=cost_model(model))


def build_trainer(spec: RunSpec, sinks: tuple[Sink, ...] = ()) -> Trainer:
    """A ready trainer for ``spec`` (policy wired to the model's slots)."""
    task = load_task(
        spec.task, data_dir=spec.data_dir, max_train_samples=spec.max_train_samples, host_channels=spec.host_channels
    )
    config = TrainerConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        lr_schedule=spec.lr_schedule,
        seed=spec.seed,
        governor=GovernorConfig(sigma=spec.spike_sigma),
    )
    trainer = Trainer(task, StaticPolicy(), config, kasmina=KASMINA, sinks=sinks)
    trainer.policy = make_policy(spec, trainer.model)
    return trainer


def stage_summary(trainer: Trainer) -> str:
    """Seeds by stage, e.g. ``fossilized:1 training:1`` (dormant slots left out)."""
    counts = Counter(SeedStage(s.stage).name.lower() for s in trainer.model.slots.values())
    return " ".join(f"{name}:{n}" for name, n in sorted(counts.items()) if name != "dormant") or "-"


def run(
    spec: RunSpec,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``out_dir`` (checkpoint each epoch, events, report, curves); returns the report.

    With ``resume`` the run stored in ``out_dir`` continues; ``spec.epochs`` may
    extend it, every other field comes from the checkpoint.
    """
    out = Path(out_dir)
    state = None
    if resume:
        state = read_checkpoint(out)
        spec = replace(RunSpec.from_dict(state["meta"]), epochs=spec.epochs)
    log = EventLog(out / EVENTS_NAME, keep=state["published"] if state else None)
    trainer = build_trainer(spec, sinks=(log,))
    if state is not None:
        restore_checkpoint(trainer, state)
    meta = asdict(spec)
    bar = _progress_bar(trainer, progress)

    def on_epoch(t: Trainer, record: EpochRecord) -> None:
        save_checkpoint(t, out, meta=meta)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(
                f"ep {record.epoch} loss {record.train_loss:.3f}/{record.val_loss:.3f} "
                f"acc {100 * record.train_accuracy:.1f}/{100 * record.val_accuracy:.1f}% "
                f"params {record.params} seeds {stage_summary(t)}"
            )

    try:
        trainer.fit(stop_after=stop_after, on_epoch=on_epoch)
    finally:
        log.close()
        if bar is not None:
            bar.close()
    return write_report(trainer, out, meta)


def _progress_bar(trainer: Trainer, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=trainer.config.epochs, initial=trainer.epoch, file=sys.stderr, unit="epoch", dynamic_ncols=True)
