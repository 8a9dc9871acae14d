"""Grow a model and take it home: one call from a task to an exported, plain ``nn.Module``.

:func:`grow` runs a job exactly as ``esper train`` does (the same run folder:
checkpoint each epoch, ``events.jsonl``, ``report.json``, ``curves.png``;
``resume=True`` continues it), then exports the trained network with
:func:`esper.kasmina.export` and checks the export against the trained model
on the whole test split. :func:`static_vs_grown` trains the same job twice,
the static host and the heuristic, for an honest comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch import nn

from esper.kasmina import export
from esper.leyline import TrainingJob, validate
from esper.tolaria.runs import RunFolder
from esper.tolaria.trainer import EpochRecord, Trainer


@dataclass
class Grown:
    """A finished run: its report, the trainer, the exported model, and how far the export is from the model.

    ``export_max_diff``: the largest absolute difference between the trained
    model's and the exported module's outputs over the test split (eval mode);
    ``model_test_score`` and ``export_test_score``: the test score (accuracy or
    R²) of the trained model as it ended the run and of its export. (The
    report's last test number was taken before the last boundary's decision and
    alpha step, so it can differ from both.)
    """

    report: dict[str, Any]
    trainer: Trainer
    model: nn.Module
    export_max_diff: float
    model_test_score: float
    export_test_score: float


def grow(task: str, out_dir: str | Path, *, resume: bool = False, progress: bool = False, **job: Any) -> Grown:
    """Train ``task`` (a built-in name or ``package.module:function``) into ``out_dir`` and export it.

    ``job`` holds any other :class:`~esper.leyline.TrainingJob` field
    (``epochs``, ``policy``, ``seed``, ``param_budget``, ``batch_size``, ``lr``, ...).
    """
    spec = validate(msgspec.convert({"task": task, **job}, TrainingJob))
    folder = RunFolder.open(spec, out_dir, resume=resume)
    trainer = folder.trainer
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=trainer.config.epochs, initial=trainer.epoch, unit="epoch")

    def on_epoch(_trainer: Trainer, record: EpochRecord) -> None:
        folder.checkpoint()
        if bar is not None:
            bar.update(record.span)

    try:
        trainer.fit(on_epoch=on_epoch)
    except BaseException:
        folder.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    report = folder.finish()
    split = trainer.task.test
    was_training = trainer.model.training
    trainer.model.eval()
    exported = export(trainer.model, example_inputs=(split.x[:64],))
    exported.eval()
    with torch.no_grad():
        diff, score, own = 0.0, 0.0, 0.0
        for start in range(0, len(split), 1000):
            x, y = split.x[start : start + 1000], split.y[start : start + 1000]
            mine, theirs = trainer.model(x), exported(x)
            diff = max(diff, float((mine - theirs).abs().max()))
            score += float(trainer.task.objective.score_sum(theirs, y))
            own += float(trainer.task.objective.score_sum(mine, y))
    trainer.model.train(was_training)
    n = max(len(split), 1)
    return Grown(report, trainer, exported, diff, own / n, score / n)


def static_vs_grown(task: str, out_dir: str | Path, **job: Any) -> dict[str, Grown]:
    """The same job trained as the static host (``policy="none"``) and grown by the heuristic.

    Runs land in ``out_dir/static`` and ``out_dir/heuristic``.
    """
    job.pop("policy", None)
    out = Path(out_dir)
    return {policy: grow(task, out / policy, policy=policy, **job) for policy in ("none", "heuristic")}


def summary(runs: dict[str, Grown]) -> dict[str, Any]:
    """One line per policy: final test score, parameters before and after, seeds fossilized, export check."""
    rows = {}
    for policy, g in runs.items():
        r = g.report
        rows[policy] = {
            "score": r.get("score", "accuracy"),
            "test": r["final_test_accuracy"],
            "params_initial": r["params_initial"],
            "params_final": r["params_final"],
            "fossilized": [e["blueprint"] + "@" + e["slot"] for e in r["seed_events"] if e["to"] == "FOSSILIZED"],
            "model_test": g.model_test_score,
            "export_test": g.export_test_score,
            "export_max_diff": g.export_max_diff,
        }
    return rows
