"""The campaign's checks catch what they claim to: a missing or twice-archived message, a command applied
twice (and not one result delivered twice), an unfinished run, poison not dead-lettered by every group, a
phantom run (fast; a real Redis)."""

from __future__ import annotations

import redis

from esper.leyline import (
    CommandAction,
    CommandResult,
    CommandStatus,
    DeadLetter,
    Envelope,
    TelemetryEvent,
    TrainingJob,
    TrainingSignals,
    encode,
)
from esper.leyline import streams as ls
from esper.nissa.archive import RunArchive

from .checks import verify

_FIELD = ls.ENVELOPE_FIELD.encode()


def put(client: redis.Redis, stream: str, envelope: Envelope) -> str:
    return client.xadd(stream, {_FIELD: encode(envelope)}).decode()


def signals(epoch: int) -> TrainingSignals:
    return TrainingSignals(epoch=epoch, train_loss=1.0, val_loss=1.0, train_accuracy=0.5, val_accuracy=0.5)


def dead(entry_id: str, group: str) -> Envelope:
    letter = DeadLetter(
        stream=ls.TELEMETRY_TRAINING,
        entry_id=entry_id,
        group=group,
        consumer="c",
        deliveries=1,
        error_type="CodecError",
        error="undecodable",
        original=b"junk",
        dead_lettered_at=0.0,
    )
    return Envelope(payload=letter, run_id="dlq")


def test_each_kind_of_loss_is_counted(clean_redis_url, tmp_path):
    client = redis.Redis.from_url(clean_redis_url)
    archive = RunArchive(tmp_path / "nissa")
    good = [Envelope(payload=signals(e), run_id="good") for e in (1, 2)]
    good.append(Envelope(payload=TelemetryEvent(kind="run_finished", epoch=2), run_id="good"))
    bad = [Envelope(payload=signals(1), run_id="bad")]  # epoch 2 never trained, never finished
    for envelope in good + bad:
        put(
            client,
            ls.TELEMETRY_TRAINING if isinstance(envelope.payload, TrainingSignals) else ls.TELEMETRY_EVENTS,
            envelope,
        )
    for envelope in good:
        archive.append(envelope)
    archive.append(good[0])  # archived twice
    # Nothing of "bad" reached the archive: its signals and its two results are missing.
    result = CommandResult(command_id="c1", action=CommandAction.GERMINATE, status=CommandStatus.APPLIED, epoch=1)
    for _ in range(2):  # two results (two message ids): applied twice
        put(client, ls.CONTROL_RESULTS, Envelope(payload=result, run_id="bad"))
    once = Envelope(payload=result, run_id="good")
    for _ in range(2):  # one result delivered twice (same message id): applied once
        put(client, ls.CONTROL_RESULTS, once)
    archive.append(once)
    for run_id in ("good", "bad"):
        put(client, ls.CONTROL_JOBS, Envelope(payload=TrainingJob(epochs=2), run_id=run_id))
    poison = [client.xadd(ls.TELEMETRY_TRAINING, {_FIELD: b"\x00junk"}).decode() for _ in range(2)]
    put(client, ls.DEAD_LETTER, dead(poison[0], ls.GROUP_TAMIYO))
    put(client, ls.DEAD_LETTER, dead(poison[0], ls.GROUP_NISSA))
    put(client, ls.DEAD_LETTER, dead(poison[1], ls.GROUP_NISSA))  # Tamiyo never dead-lettered it
    listed = [{"run_id": "good"}, {"run_id": "bad"}, {"run_id": "ghost"}]

    verdict = verify(client, tmp_path, {"good": 2, "bad": 2}, ["refused"], listed, poison)
    client.close()

    assert verdict.runs["good"].complete and verdict.runs["good"].telemetry_duplicated == 1
    assert verdict.runs["good"].telemetry_missing == 0 and verdict.runs["good"].commands_applied_twice == 0
    assert verdict.runs["good"].results_delivered_twice == 1 and verdict.summary["results_delivered_twice"] == 1
    bad_run = verdict.runs["bad"]
    assert not bad_run.complete and bad_run.telemetry_missing == 3 and bad_run.commands_applied_twice == 1
    assert verdict.summary["runs_finished"] == 1 and verdict.summary["runs_submitted"] == 3
    assert verdict.summary["poison_dead_lettered"] == 1 and verdict.summary["poison_injected"] == 2
    assert verdict.phantom_runs == ["ghost"] and verdict.summary["phantom_runs"] == 1
