"""Wiring one run: task + Kasmina model + policy + Tolaria trainer + the run's folder.

A run is a Leyline :class:`TrainingJob` (the one definition of its settings).
``esper train``, ``benchmarks/growth.py`` and the Tolaria service all build
runs here, so the benchmark measures exactly what users run and a service run
writes the same files as ``esper train``. The policy comes from Tamiyo's core
(:func:`esper.tamiyo.policies.make_policy`), the same factory the Tamiyo
service uses, and decides through the same decide step.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from esper.kasmina import KasminaConfig
from esper.kasmina.kernels import FROM_ENV, KernelLoader, process_loader
from esper.leyline import GateThresholds, SeedStage, TrainingJob
from esper.tamiyo.policies import POLICIES, check_policy, make_policy
from esper.tolaria.checkpoint import CHECKPOINT_NAME, read_checkpoint, restore_checkpoint, save_checkpoint
from esper.tolaria.config import reaches_multiple
from esper.tolaria.distributed import DataParallel
from esper.tolaria.governor import GovernorConfig
from esper.tolaria.report import EVENTS_NAME, EventLog, write_report
from esper.tolaria.tasks import load_task
from esper.tolaria.trainer import EpochRecord, Sink, Trainer, TrainerConfig

#: Kasmina's lifecycle tempo for Tolaria's runs: a short TRAINING stage, a quick blend (seeds joint by default).
KASMINA = KasminaConfig(
    thresholds=GateThresholds(min_training_epochs=2, min_shadowing_epochs=1, min_probation_epochs=1),
    blend_epochs=3,
    embargo_epochs=3,
)


def job_from_dict(data: Mapping[str, Any]) -> TrainingJob:
    """The job stored in a checkpoint or given as JSON; ValueError naming the field when it does not fit."""
    known = {f for f in TrainingJob.__struct_fields__}
    try:
        return msgspec.convert({k: v for k, v in data.items() if k in known}, TrainingJob)
    except msgspec.ValidationError as exc:
        raise ValueError(f"training job: {exc}") from None


def build_trainer(
    job: TrainingJob,
    sinks: tuple[Sink, ...] = (),
    *,
    decide_in_process: bool = True,
    run_id: str = "local",
    parallel: DataParallel | None = None,
    kernels: KernelLoader | str | None = FROM_ENV,
) -> Trainer:
    """A ready trainer for ``job``.

    With ``decide_in_process`` (``esper train``) the policy ``job`` names
    decides every epoch through Tamiyo's decide step; without it (the service)
    the trainer has no policy and applies only the commands it is handed.
    ``parallel``: this process's rank of a data parallel run (``esper.tolaria.distributed``).
    ``kernels``: where germinated seeds come from when their compiled kernel loads; by default the
    process's loader when ``ESPER_URZA_URL`` is set (:func:`esper.kasmina.kernels.process_loader`), else none.
    """
    if decide_in_process:  # the service's runs name policies Tamiyo's registry knows; Tolaria never builds them
        check_policy(job.policy)
    task = load_task(
        job.task, data_dir=job.data_dir, max_train_samples=job.max_train_samples, host_channels=job.host_channels
    )
    config = TrainerConfig(
        epochs=job.epochs,
        steps_per_epoch=job.steps_per_epoch,
        lengthen_settled=job.lengthen_settled,
        host_wait_steps=job.host_wait_steps,
        batch_size=job.batch_size,
        lr=job.lr,
        lr_schedule=job.lr_schedule,
        precision=job.precision,
        seed=job.seed,
        governor=GovernorConfig(sigma=job.spike_sigma),
    )
    policy = make_policy(job.policy, job) if decide_in_process else None
    return Trainer(
        task,
        policy,
        config,
        kasmina=replace(KASMINA, isolate_seeds=job.isolate_seeds),
        sinks=sinks,
        run_id=run_id,
        param_budget=job.param_budget,
        parallel=parallel,
        kernels=process_loader() if isinstance(kernels, str) else kernels,  # FROM_ENV
    )


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

    def __init__(self, job: TrainingJob, out_dir: Path, trainer: Trainer, log: EventLog, mode: str) -> None:
        self.job, self.out_dir, self.trainer, self.log = job, out_dir, trainer, log
        self.meta = {**job.to_dict(), "mode": mode}

    @classmethod
    def open(
        cls,
        job: TrainingJob,
        out_dir: str | Path,
        *,
        resume: bool = False,
        sinks: tuple[Sink, ...] = (),
        decide_in_process: bool = True,
        run_id: str = "local",
        mode: str = "in-process",
        parallel: DataParallel | None = None,
    ) -> RunFolder:
        """Build the run. With ``resume`` the checkpoint in ``out_dir`` is restored; ``job.epochs`` may
        extend the run, every other field comes from the checkpoint (FileNotFoundError when there is none).
        ``mode`` (``in-process``, ``lockstep``, ``async``) is recorded in the report."""
        out = Path(out_dir)
        state = None
        if resume:
            state = read_checkpoint(out)
            job = msgspec.structs.replace(job_from_dict(state["meta"]), epochs=job.epochs)
        log = EventLog(out / EVENTS_NAME, keep=state["published"] if state else None)
        try:
            trainer = build_trainer(
                job, sinks=(log, *sinks), decide_in_process=decide_in_process, run_id=run_id, parallel=parallel
            )
            if state is not None:
                restore_checkpoint(trainer, state)
        except BaseException:
            log.close()
            raise
        return cls(job, out, trainer, log, mode)

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
    job: TrainingJob,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Train ``job`` in this process into ``out_dir`` (checkpoint each ``checkpoint_every`` epochs, by default
    about once per pass over the data, i.e. every epoch of the default length, and after the last; events,
    report, curves); returns the report.

    With ``resume`` the run stored in ``out_dir`` continues; ``job.epochs`` may
    extend it, every other field comes from the checkpoint. A job with
    ``world_size`` > 1 runs in that many processes (:func:`esper.tolaria.distributed.run_parallel`).
    """
    if job.world_size > 1:
        from esper.tolaria.distributed import run_parallel

        return run_parallel(job, out_dir, resume=resume, progress=progress, stop_after=stop_after)
    folder = RunFolder.open(job, out_dir, resume=resume)
    trainer = folder.trainer
    bar = _progress_bar(trainer, progress)

    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"field 'checkpoint_every': must be >= 1 (value {checkpoint_every!r})")
    every = checkpoint_every or trainer.epochs_per_pass()

    def on_epoch(t: Trainer, record: EpochRecord) -> None:
        if reaches_multiple(t.epoch, record.span, every) or t.epoch >= t.config.epochs or t.stop_requested:
            folder.checkpoint()
        if bar is not None:
            bar.update(record.span)
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
    "build_trainer",
    "epoch_line",
    "has_checkpoint",
    "job_from_dict",
    "run",
    "stage_summary",
]
