"""What a chaos campaign proves afterwards, read from Redis, Nissa's archive and the control API alone.

* every accepted run finished, with every epoch trained;
* no command was applied twice: APPLIED results per ``command_id``, counted by message id (the bus is
  at-least-once, so one result may be on its stream twice: a publish retried after a lost reply, a journal
  republished on resume; consumers are idempotent by message id, and that is one application, not two);
* every telemetry message on the streams that Nissa's profile archives is in
  its archive exactly once (missing and duplicated are counted apart);
* every poison entry is in the dead-letter stream once per consuming group;
* no phantom runs: every run the API lists has its job on the jobs stream, and
  no refused submission left a run behind.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from esper.leyline import (
    CommandResult,
    CommandStatus,
    DeadLetter,
    Envelope,
    Message,
    TelemetryEvent,
    TrainingSignals,
    decode,
)
from esper.leyline import streams as ls
from esper.leyline.codec import CodecError
from esper.nissa.archive import RunArchive
from esper.nissa.profiles import DEFAULT_PROFILE
from esper.nissa.service.recorder import NISSA_STREAMS

_FIELD = ls.ENVELOPE_FIELD.encode()
RUN_FINISHED = "run_finished"
#: The groups that consume the stream poison is put on (TELEMETRY_TRAINING).
POISON_GROUPS = frozenset({ls.GROUP_TAMIYO, ls.GROUP_NISSA})


@dataclass
class RunCheck:
    """What became of one accepted run."""

    run_id: str
    epochs: int
    finished: bool = False
    epochs_trained: list[int] = field(default_factory=list)
    commands_applied_twice: int = 0
    #: APPLIED results on the stream more than once under one message id (redelivery, not an error)
    results_delivered_twice: int = 0
    telemetry_missing: int = 0
    telemetry_duplicated: int = 0

    @property
    def complete(self) -> bool:
        return self.finished and sorted(set(self.epochs_trained)) == list(range(1, self.epochs + 1))

    def losses(self) -> list[str]:
        out = []
        if not self.complete:
            out.append("unfinished" if not self.finished else "epochs missing")
        if self.commands_applied_twice:
            out.append(f"{self.commands_applied_twice} command(s) applied twice")
        if self.telemetry_missing:
            out.append(f"{self.telemetry_missing} telemetry missing")
        if self.telemetry_duplicated:
            out.append(f"{self.telemetry_duplicated} archived twice")
        return out


@dataclass
class Verdict:
    runs: dict[str, RunCheck]
    poison_dead_lettered: int
    poison_injected: int
    phantom_runs: list[str]
    refused_but_enqueued: list[str]
    summary: dict[str, Any] = field(default_factory=dict)


def read_stream(client: redis.Redis, stream: str) -> list[tuple[str, Envelope[Message] | None]]:
    """Every entry of ``stream`` as (entry id, envelope or None when it does not decode)."""
    out: list[tuple[str, Envelope[Message] | None]] = []
    cursor = "-"
    while True:
        batch: Any = client.xrange(stream, cursor, "+", count=5000)
        if not batch:
            return out
        for entry_id, fields in batch:
            try:
                envelope: Envelope[Message] | None = decode(fields.get(_FIELD, b""))
            except CodecError:
                envelope = None
            out.append((entry_id.decode(), envelope))
        cursor = "(" + batch[-1][0].decode()


def verify(
    client: redis.Redis,
    runs_dir: Path,
    accepted: dict[str, int],
    refused: list[str],
    listed: list[dict[str, Any]],
    poison_entries: list[str],
) -> Verdict:
    """Check the campaign's runs (``accepted``: run id -> epochs) against what the stack left behind."""
    checks = {run_id: RunCheck(run_id, epochs) for run_id, epochs in accepted.items()}
    expected: dict[str, Counter[str]] = {run_id: Counter() for run_id in accepted}
    applied: dict[str, dict[str, set[str]]] = {run_id: {} for run_id in accepted}
    delivered: dict[str, Counter[str]] = {run_id: Counter() for run_id in accepted}
    for stream in NISSA_STREAMS:
        if stream == ls.DEAD_LETTER:
            continue
        for _, envelope in read_stream(client, stream):
            if envelope is None or envelope.run_id not in checks:
                continue
            run = checks[envelope.run_id]
            payload = envelope.payload
            if DEFAULT_PROFILE.archives(envelope.message_type):
                expected[run.run_id][envelope.message_id] += 1
            if isinstance(payload, TrainingSignals):
                run.epochs_trained.append(payload.epoch)
            elif isinstance(payload, TelemetryEvent) and payload.kind == RUN_FINISHED:
                run.finished = True
            elif isinstance(payload, CommandResult) and payload.status is CommandStatus.APPLIED:
                applied[run.run_id].setdefault(payload.command_id, set()).add(envelope.message_id)
                delivered[run.run_id][envelope.message_id] += 1
    archive = RunArchive(runs_dir / "nissa")
    for run_id, run in checks.items():
        archived = Counter(e.message_id for e in archive.read(run_id))
        run.telemetry_missing = sum(1 for m in expected[run_id] if m not in archived)
        run.telemetry_duplicated = sum(n - 1 for n in archived.values() if n > 1)
        run.commands_applied_twice = sum(1 for ids in applied[run_id].values() if len(ids) > 1)
        run.results_delivered_twice = sum(1 for n in delivered[run_id].values() if n > 1)

    dead: dict[str, set[str]] = {}
    for _, envelope in read_stream(client, ls.DEAD_LETTER):
        if envelope is not None and isinstance(envelope.payload, DeadLetter):
            dead.setdefault(envelope.payload.entry_id, set()).add(envelope.payload.group)
    poison_ok = sum(1 for e in poison_entries if POISON_GROUPS <= dead.get(e, set()))

    jobs = {e.run_id for _, e in read_stream(client, ls.CONTROL_JOBS) if e is not None}
    phantoms = [r["run_id"] for r in listed if r["run_id"] not in jobs]
    listed_ids = {r["run_id"] for r in listed}
    refused_but_enqueued = [r for r in refused if r in jobs or r in listed_ids]
    verdict = Verdict(checks, poison_ok, len(poison_entries), phantoms, refused_but_enqueued)
    verdict.summary = {
        "runs_submitted": len(accepted) + len(refused),
        "runs_accepted": len(accepted),
        "runs_refused_503": len(refused),
        "runs_finished": sum(1 for r in checks.values() if r.complete),
        "commands_applied_twice": sum(r.commands_applied_twice for r in checks.values()),
        "results_delivered_twice": sum(r.results_delivered_twice for r in checks.values()),
        "telemetry_expected": sum(len(c) for c in expected.values()),
        "telemetry_missing": sum(r.telemetry_missing for r in checks.values()),
        "telemetry_duplicated": sum(r.telemetry_duplicated for r in checks.values()),
        "phantom_runs": len(phantoms),
        "refused_but_enqueued": len(refused_but_enqueued),
        "poison_injected": len(poison_entries),
        "poison_dead_lettered": poison_ok,
    }
    return verdict
