"""``esper up --demo``: submit the default job through the control API, follow it, complete its report.

The run's report is written by Tolaria (``<runs_dir>/<run_id>/report.json``, as
``esper train`` writes it). Once Tolaria announces ``run_finished``, the demo
waits for Tamiyo to have handled every training signal (it may decide on the
last epoch after the finish, or skip it as the run is over) and for Nissa to
have consumed every stream, then adds to the report what the other services recorded:
``decisions`` (Tamiyo's decisions with reasons, confidences, the safety
verdict and what Tolaria did with the command) and ``narrative`` (Nissa's
narrative lines).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from esper.cli.follow import RUN_STREAMS, RunFeed, stream_tails, wait_caught_up
from esper.cli.stack import Stack, StackError
from esper.leyline import (
    AdaptationDecision,
    CommandResult,
    DecisionAction,
    Envelope,
    EventKind,
    Message,
    SeedStage,
    SeedTransition,
    TelemetryEvent,
    TrainingJob,
    TrainingSignals,
    streams,
)
from esper.nissa import RunArchive
from esper.nissa.service.recorder import NISSA_STREAMS, default_archive_dir

NARRATIVE_FILE = "narrative.md"
#: Seconds to wait after ``run_finished`` for Tamiyo and Nissa to catch up.
SETTLE_TIMEOUT_S = 20.0


def submit_run(api_url: str, token: str, body: dict[str, Any]) -> str:
    """``POST /runs``; returns the new run id. ``RuntimeError`` with the API's answer when refused."""
    response = httpx.post(f"{api_url}/runs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
    if response.status_code >= 300:
        raise RuntimeError(f"POST {api_url}/runs answered {response.status_code}: {response.text[:500]}")
    run_id = response.json().get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise RuntimeError(f"POST {api_url}/runs gave no run_id: {response.text[:500]}")
    return run_id


def decisions_from_archive(archive_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Tamiyo's decisions for ``run_id`` from Nissa's archive, each with the outcome of its command."""
    decisions: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for event in RunArchive(archive_dir).read(run_id):
        if event.message_type == AdaptationDecision.message_type:
            decisions.append(event.payload)
        elif event.message_type == CommandResult.message_type:
            results.setdefault(event.payload["command_id"], event.payload)  # the first answer is what happened
    rows = []
    for d in sorted(decisions, key=lambda d: d["epoch"]):
        result = results.get(d.get("command_id") or "")
        rows.append(
            {
                "epoch": d["epoch"],
                "index": d.get("index", 0),  # which of the boundary's decisions (one per slot at most)
                "count": d.get("count", 1),
                "action": d["action"],
                "slot": d.get("slot_id"),
                "blueprint": d.get("blueprint"),
                "reason": d["reason"],
                "confidence": d["confidence"],
                "accepted": d.get("accepted", True),
                "rejection_reason": d.get("rejection_reason"),
                "command_id": d.get("command_id"),
                "command_status": result["status"] if result else None,
                "command_reason": result.get("reason") if result else None,
            }
        )
    return rows


def narrative_from_archive(archive_dir: Path, run_id: str) -> list[str]:
    """Nissa's narrative lines for ``run_id`` (none under a profile without narrative)."""
    path = archive_dir / run_id / NARRATIVE_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [line[2:] if line.startswith("- ") else line for line in lines]


def complete_report(runs_dir: Path, run_id: str, archive_dir: Path | None = None) -> Path:
    """Add ``decisions`` and ``narrative`` to ``<runs_dir>/<run_id>/report.json`` (atomically); return its path."""
    from esper.tolaria.report import REPORT_NAME  # torch: only once a report is read

    archive_dir = archive_dir or default_archive_dir(runs_dir)
    path = runs_dir / run_id / REPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"field 'run_id': Tolaria wrote no {REPORT_NAME} for run {run_id!r} ({path})")
    report = json.loads(path.read_text())
    report["run_id"] = run_id
    report["decisions"] = decisions_from_archive(archive_dir, run_id)
    report["narrative"] = narrative_from_archive(archive_dir, run_id)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=True))
    os.replace(tmp, path)
    return path


def progress_line(stream: str, envelope: Envelope[Message], epochs: int | None) -> str | None:
    """One line for the terminal about a message of the run, or ``None`` for the uninteresting ones."""
    message = envelope.payload
    match message:
        case TrainingSignals():
            total = f"/{epochs}" if epochs else ""
            active = [f"{s.slot_id}:{s.stage.name}" for s in message.seeds if s.stage is not SeedStage.DORMANT]
            seeds = " ".join(active) if active else "all dormant"
            return (
                f"  epoch {message.epoch:>3}{total}  val acc {100 * message.val_accuracy:5.1f}%  "
                f"val loss {message.val_loss:.4f}  params {message.params_total:>6}  seeds: {seeds}"
            )
        case AdaptationDecision() if message.action is not DecisionAction.WAIT:
            verdict = "accepted" if message.accepted else f"REJECTED ({message.rejection_reason})"
            target = " ".join(x for x in (message.blueprint, message.slot_id and f"in {message.slot_id}") if x)
            why = f"{message.reason}; confidence {message.confidence:.2f}"
            return f"  tamiyo: {message.action.value} {target} ({why}) {verdict}"
        case CommandResult():
            return f"  tolaria: command {message.action.value} {message.status.value}" + (
                f" ({message.reason})" if message.reason else ""
            )
        case SeedTransition():
            return f"  seed {message.slot_id}: {message.from_stage.name} -> {message.to_stage.name} ({message.reason})"
    return None


def follow_run(
    feed: RunFeed,
    stack: Stack,
    timeout_s: float,
    epochs: int | None = None,
    out: Callable[[str], None] = print,
) -> tuple[TelemetryEvent, int | None]:
    """Print the run's progress until Tolaria's ``run_finished``; returns it and the last epoch seen."""
    deadline = time.monotonic() + timeout_s
    last_epoch: int | None = None
    while True:
        for stream, envelope in feed.poll():
            message = envelope.payload
            if isinstance(message, TrainingSignals):
                last_epoch = message.epoch if last_epoch is None else max(last_epoch, message.epoch)
            line = progress_line(stream, envelope, epochs)
            if line is not None:
                out(line)
            if isinstance(message, TelemetryEvent) and message.kind == EventKind.RUN_FINISHED:
                return message, last_epoch
        if stack.failed:
            name = stack.failed[0]
            raise StackError(f"{name} kept dying during the run; see {stack[name].log_path}\n{stack[name].log_tail()}")
        if time.monotonic() > deadline:
            raise StackError(f"run {feed.run_id} did not finish within {timeout_s:.0f}s")


def run_demo(stack: Stack, job: TrainingJob, token: str, timeout_s: float, out: Callable[[str], None] = print) -> Path:
    """Submit ``job``, follow it to the end, complete and summarize its report; returns the report's path."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        start = stream_tails(client, RUN_STREAMS)
        run_id = submit_run(stack["tamiyo"].url, token, job.to_dict())
        mode = "lockstep" if job.lockstep else "async"
        out(f"esper up --demo: submitted run {run_id} ({job.task}, policy {job.policy}, {mode}); following it")
        feed = RunFeed(client, run_id, start=start)
        follow_run(feed, stack, timeout_s, job.epochs, out)
        # Without lockstep Tamiyo may still be on the last epoch: once its group has handled every
        # training signal, whatever it decided is on the decisions stream (published before the ack).
        wait_caught_up(client, (streams.TELEMETRY_TRAINING,), streams.GROUP_TAMIYO, SETTLE_TIMEOUT_S)
        if not wait_caught_up(client, NISSA_STREAMS, streams.GROUP_NISSA, SETTLE_TIMEOUT_S):
            out("esper up --demo: warning: Nissa has not caught up; the report's decisions may be incomplete")
    finally:
        client.close()
    from esper.tolaria.report import format_summary

    report_path = complete_report(stack.runs_dir, run_id)
    report = json.loads(report_path.read_text())
    out("")
    out(format_summary(report))
    decided = [d for d in report["decisions"] if d["action"] != DecisionAction.WAIT.value]
    n_decisions, n_lines = len(report["decisions"]), len(report["narrative"])
    out(f"decisions: {n_decisions} ({len(decided)} other than wait); narrative: {n_lines} lines")
    for line in report["narrative"][-10:]:
        out(f"  {line}")
    out(f"report: {report_path}")
    return report_path
