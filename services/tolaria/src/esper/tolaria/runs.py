"""Wiring one run: task + Kasmina model + policy + Tolaria trainer + the run's folder.

``esper train``, ``benchmarks/growth.py`` and the Tolaria service all build runs
here, so the benchmark measures exactly what users run and a service run writes
the same files as ``esper train``.

Tolaria already depends on Tamiyo (the trainer speaks its ``Policy`` protocol
and tracks signals with its ``SignalTracker``), so wiring the heuristic here adds
no new edge between the packages; the CLI and the service both import it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from esper.kasmina import KasminaConfig, MorphogeneticModel, get_blueprint
from esper.leyline import GateThresholds, SeedStage, TrainingJob
from esper.tamiyo.heuristic import BlueprintChoice, CostModel, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy
from esper.tolaria.checkpoint import CHECKPOINT_NAME, read_checkpoint, restore_checkpoint, save_checkpoint
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

    @classmethod
    def from_job(cls, job: TrainingJob) -> RunSpec:
        """The run a :class:`TrainingJob` asks for (its lockstep settings concern the service, not the run)."""
        return cls(
            task=job.task,
            policy=job.policy,
            epochs=job.epochs,
            seed=job.seed,
            data_dir=job.data_dir,
            max_train_samples=job.max_train_samples,
            host_channels=job.host_channels,
            batch_size=job.batch_size,
            lr=job.lr,
            lr_schedule=job.lr_schedule,
            param_budget=job.param_budget,
        )


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
    """The heuristic's defaults: wide residual conv seeds in every slot from the first epoch, within the budget.

    Growing early gives the seeds nearly the whole run to train, and on
    MNIST-1D validation that beat waiting for a plateau; a seed that does not
    earn its place is still culled by the gates. ``benchmarks/growth.py``
    measures the result against static hosts of both sizes.
    """
    candidates = (
        BlueprintChoice("conv_heavy", {"kernel_size": 3, "expansion": 3.5}),
        BlueprintChoice("bottleneck", {"kernel_size": 3, "reduction": 2}),
        BlueprintChoice("conv_light", {"kernel_size": 3}),
    )
    return HeuristicConfig(
        plateau_patience=0,
        plateau_min_delta=0.005,
        min_epoch_to_germinate=1,
        max_active_seeds=3,
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


def build_trainer(spec: RunSpec, sinks: tuple[Sink, ...] = (), *, decide_in_process: bool = True) -> Trainer:
    """A ready trainer for ``spec``.

    With ``decide_in_process`` (``esper train``) the policy ``spec`` names is wired
    to the model's slots and decides every epoch; without it (the service) the
    trainer has no policy and applies only the commands it is handed.
    """
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
    trainer = Trainer(task, None, config, kasmina=KASMINA, sinks=sinks)
    if decide_in_process:
        trainer.policy = make_policy(spec, trainer.model)
    return trainer


def stage_summary(trainer: Trainer) -> str:
    """Seeds by stage, e.g. ``fossilized:1 training:1`` (dormant slots left out)."""
    counts = Counter(SeedStage(s.stage).name.lower() for s in trainer.model.slots.values())
    return " ".join(f"{name}:{n}" for name, n in sorted(counts.items()) if name != "dormant") or "-"


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a run's checkpoint."""
    return (Path(out_dir) / CHECKPOINT_NAME).is_file()


class RunFolder:
    """One run and its folder: the trainer, ``events.jsonl`` as it goes, a checkpoint per epoch, the report.

    :meth:`open` starts a fresh run in ``out_dir`` or resumes the one stored
    there; the caller drives ``trainer`` and calls :meth:`checkpoint` at each
    boundary and :meth:`finish` at the end (or :meth:`close` to leave the run
    resumable).
    """

    def __init__(self, spec: RunSpec, out_dir: Path, trainer: Trainer, log: EventLog) -> None:
        self.spec, self.out_dir, self.trainer, self.log = spec, out_dir, trainer, log
        self.meta = asdict(spec)

    @classmethod
    def open(
        cls,
        spec: RunSpec,
        out_dir: str | Path,
        *,
        resume: bool = False,
        sinks: tuple[Sink, ...] = (),
        decide_in_process: bool = True,
    ) -> RunFolder:
        """Build the run. With ``resume`` the checkpoint in ``out_dir`` is restored; ``spec.epochs`` may
        extend the run, every other field comes from the checkpoint (FileNotFoundError when there is none)."""
        out = Path(out_dir)
        state = None
        if resume:
            state = read_checkpoint(out)
            spec = replace(RunSpec.from_dict(state["meta"]), epochs=spec.epochs)
        log = EventLog(out / EVENTS_NAME, keep=state["published"] if state else None)
        try:
            trainer = build_trainer(spec, sinks=(log, *sinks), decide_in_process=decide_in_process)
            if state is not None:
                restore_checkpoint(trainer, state)
        except BaseException:
            log.close()
            raise
        return cls(spec, out, trainer, log)

    def checkpoint(self) -> Path:
        """Save the trainer's full state (after an epoch, or after commands applied between epochs)."""
        return save_checkpoint(self.trainer, self.out_dir, meta=self.meta)

    def finish(self) -> dict[str, Any]:
        """Close the event log, write ``report.json`` and ``curves.png``; returns the report."""
        self.close()
        return write_report(self.trainer, self.out_dir, self.meta)

    def close(self) -> None:
        self.log.close()


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
    folder = RunFolder.open(spec, out_dir, resume=resume)
    trainer = folder.trainer
    bar = _progress_bar(trainer, progress)

    def on_epoch(t: Trainer, record: EpochRecord) -> None:
        folder.checkpoint()
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(epoch_line(t, record))

    try:
        trainer.fit(stop_after=stop_after, on_epoch=on_epoch)
    except BaseException:
        folder.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return folder.finish()


def epoch_line(trainer: Trainer, record: EpochRecord) -> str:
    """One epoch in a line: losses, accuracies, parameters, seeds by stage."""
    return (
        f"ep {record.epoch} loss {record.train_loss:.3f}/{record.val_loss:.3f} "
        f"acc {100 * record.train_accuracy:.1f}/{100 * record.val_accuracy:.1f}% "
        f"params {record.params} seeds {stage_summary(trainer)}"
    )


def _progress_bar(trainer: Trainer, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=trainer.config.epochs, initial=trainer.epoch, file=sys.stderr, unit="epoch", dynamic_ncols=True)


__all__ = [
    "KASMINA",
    "POLICIES",
    "RunFolder",
    "RunSpec",
    "build_trainer",
    "cost_model",
    "epoch_line",
    "has_checkpoint",
    "heuristic_config",
    "make_policy",
    "run",
    "stage_summary",
]
