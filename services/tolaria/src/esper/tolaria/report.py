"""The run's record: ``events.jsonl`` (every published message), ``report.json``
(the summary) and ``curves.png`` (accuracy and loss curves with seed events marked).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from esper.leyline import Message, SeedStage
from esper.tolaria.trainer import Trainer
from esper.tolaria.usertask import test_metrics

REPORT_NAME = "report.json"
EVENTS_NAME = "events.jsonl"
CURVES_NAME = "curves.png"


class EventLog:
    """A sink appending each message to ``events.jsonl`` as one JSON object.

    ``keep`` (on resume) first truncates the file to its first ``keep`` lines, the
    messages the checkpoint knows were published, so a crash between a message and
    its checkpoint never duplicates lines.
    """

    def __init__(self, path: str | Path, *, keep: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep is None:
            self.path.write_text("")
        else:
            lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
            if len(lines) < keep:
                raise ValueError(f"field 'keep': {self.path} has {len(lines)} events, checkpoint expects {keep}")
            self.path.write_text("".join(lines[:keep]))
        self._handle = self.path.open("a", encoding="utf-8")

    def __call__(self, message: Message) -> None:
        record = {"type": message.message_type, **message.to_dict()}
        self._handle.write(json.dumps(record, allow_nan=True, default=str) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def seed_events(trainer: Trainer) -> list[dict[str, Any]]:
    """Every seed transition as ``{epoch, slot, blueprint, from, to, reason, seed_id}``."""
    return [
        {
            "epoch": e.epoch,
            "slot": e.slot_id,
            "blueprint": e.blueprint,
            "from": SeedStage(e.from_stage).name,
            "to": SeedStage(e.to_stage).name,
            "reason": e.reason,
            "seed_id": e.seed_id,
        }
        for e in trainer.model.events
    ]


def build_report(trainer: Trainer, meta: dict[str, Any]) -> dict[str, Any]:
    """The summary dict written to ``report.json``. ``meta`` holds task, policy and seed."""
    history = trainer.history
    tests = [r.test_accuracy for r in history if not math.isnan(r.test_accuracy)]  # NaN: not evaluated then
    last = history[-1] if history else None
    return {
        "task": meta.get("task", trainer.task.name),
        "policy": meta.get("policy", trainer.policy.name if trainer.policy is not None else "none"),
        "seed": meta.get("seed", trainer.config.seed),
        "mode": meta.get("mode", "in-process"),
        "device": str(trainer.device),
        "precision": trainer.config.precision,
        "epochs": trainer.epoch,
        "planned_epochs": trainer.config.epochs,
        "steps": trainer.step,
        "final_test_accuracy": tests[-1] if tests else None,
        "best_test_accuracy": max(tests) if tests else None,
        "final_val_accuracy": last.val_accuracy if last else None,
        "best_val_accuracy": max((r.val_accuracy for r in history), default=None),
        "params_initial": trainer.params_initial,
        "params_final": trainer.model.param_count(),
        # "accuracy" above is the objective's score: accuracy, or R² for a regression task
        "score": trainer.task.objective.score_name,
        "test_metrics": test_metrics(trainer.model, trainer.task, trainer.config.eval_batch_size, trainer.autocast),
        "seed_events": seed_events(trainer),
        "rollbacks": trainer.governor.rollbacks,
        "wall_seconds": trainer.wall_seconds,
        "config": meta,
        "history": [asdict(r) for r in history],
    }


def write_report(trainer: Trainer, out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.json`` and ``curves.png`` into ``out_dir``; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(trainer, meta)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str))
    plot_curves(report, out / CURVES_NAME)
    return report


_EVENT_COLOURS = {
    SeedStage.GERMINATED.name: "tab:green",
    SeedStage.FOSSILIZED.name: "tab:blue",
    SeedStage.CULLED.name: "tab:red",
}


def plot_curves(report: dict[str, Any], path: str | Path) -> None:
    """Accuracy and loss per epoch, with germinate/fossilize/cull events as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = report["history"]
    epochs = [r["epoch"] for r in history]
    fig, (acc_ax, loss_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)

    def series(key: str) -> tuple[list[int], list[float]]:  # epochs where ``key`` was measured (not NaN)
        kept = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if r[key] == r[key]]
        return [e for e, _ in kept], [v for _, v in kept]

    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation"), ("test_accuracy", "test")):
        acc_ax.plot(*series(key), label=label)
    for key, label in (("train_loss", "train"), ("val_loss", "validation"), ("test_loss", "test")):
        loss_ax.plot(*series(key), label=label)
    params_ax = acc_ax.twinx()
    params_ax.plot(epochs, [r["params"] for r in history], color="grey", linestyle=":", label="parameters")
    params_ax.set_ylabel("parameters")
    shown: set[str] = set()
    for event in report["seed_events"]:
        colour = _EVENT_COLOURS.get(event["to"])
        if colour is None:
            continue
        for ax in (acc_ax, loss_ax):
            label = event["to"].lower() if event["to"] not in shown and ax is acc_ax else None
            ax.axvline(event["epoch"], color=colour, alpha=0.5, linestyle="--", label=label)
        shown.add(event["to"])
    acc_ax.set_ylabel("accuracy")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_xlabel("epoch")
    acc_ax.legend(loc="lower right", fontsize=8)
    loss_ax.legend(loc="upper right", fontsize=8)
    acc_ax.set_title(f"{report['task']} / {report['policy']} / seed {report['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def format_summary(report: dict[str, Any]) -> str:
    """A readable multi-line summary of a ``report.json``."""
    lines = [
        f"run: task {report['task']}, policy {report['policy']}, seed {report['seed']}, "
        f"{report['epochs']} epochs, {report['wall_seconds']:.1f} s, decided {report.get('mode', 'in-process')}"
        + (f", on {report['device']}" if report.get("device") else "")
        + (f", {report['precision']} autocast" if report.get("precision", "fp32") != "fp32" else ""),
        f"test {report.get('score', 'accuracy')}: final {_pct(report['final_test_accuracy'])}, "
        f"best {_pct(report['best_test_accuracy'])}",
        f"validation {report.get('score', 'accuracy')}: final {_pct(report.get('final_val_accuracy'))}, "
        f"best {_pct(report.get('best_val_accuracy'))}",
        f"parameters: {report['params_initial']} -> {report['params_final']}",
        *([f"test metrics: {report['test_metrics']}"] if report.get("test_metrics") else []),
        f"governor rollbacks: {report.get('rollbacks', 0)}",
    ]
    events = report["seed_events"]
    lines.append(f"seed events ({len(events)}):" if events else "seed events: none")
    for e in events:
        blueprint = f" {e['blueprint']}" if e.get("blueprint") else ""
        lines.append(f"  epoch {e['epoch']:>4}  {e['slot']}{blueprint}: {e['from']} -> {e['to']}  ({e['reason']})")
    return "\n".join(lines)


def load_report(out_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/report.json``; FileNotFoundError naming the path when absent."""
    path = Path(out_dir) / REPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"field 'dir': no {REPORT_NAME} in {str(Path(out_dir))!r}")
    report: dict[str, Any] = json.loads(path.read_text())
    return report
