"""Many runs on many replicas: commands reach only the replica that trains their run, and dead replicas' runs move.

Three Tolarias (two runs each at most) and two Tamiyos share six concurrent
lockstep runs. Every command is applied once, by the replica that trains its
run; after one Tolaria and one Tamiyo are SIGKILLed mid-run, the survivors
adopt their runs (lease expiry, then the job claimed from the dead replica),
resume from the last checkpoint, and every run finishes with its full report.
"""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from esper.cli.stack import Stack
from esper.leyline import CommandStatus, streams

from .replicas import Streams, applied_by_replica, consumer_of, eventually

TOLARIAS = ["tolaria-1", "tolaria-2", "tolaria-3"]
TAMIYOS = ["tamiyo-1", "tamiyo-2"]
RUNS = 6


def submit_runs(bus: Streams, name: str, epochs: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    run_ids = [f"{name}-{tag}-{i}" for i in range(RUNS)]
    for i, run_id in enumerate(run_ids):
        bus.submit(run_id, epochs=epochs, seed=i)
    return run_ids


def wait_all_finished(bus: Streams, run_ids: list[str], timeout_s: float) -> dict[str, dict]:
    done = eventually(
        lambda: (f := {r: bus.finished(r) for r in run_ids}) and all(f.values()) and f,
        timeout_s,
        "every run's run_finished",
    )
    return {r: e.attributes for r, e in done.items()}


def check_commands_applied_once(bus: Streams, run_id: str) -> int:
    """Every command of the run has exactly one APPLIED or REJECTED answer (duplicates aside), none twice.

    A boundary's results reach the bus only once its checkpoint holds them (Tolaria's outbox), so even the
    command applied at the boundary in flight when a replica died has one APPLIED result: dropped with the
    boundary and applied again by the resumed run, or republished on resume under its first message id
    (:meth:`Streams.applied` counts by message id).
    """
    issued = bus.command_ids(run_id)
    results = bus.results(run_id)
    applied = bus.applied(run_id)
    for command_id, n in applied.items():
        at = [r.epoch for r in results if r.command_id == command_id and r.status is CommandStatus.APPLIED]
        assert n == 1, f"run {run_id}: {command_id} applied {n} times at epochs {at}"
    answered = {r.command_id for r in results if r.status is not CommandStatus.DUPLICATE}
    assert set(issued) <= answered, f"run {run_id}: commands without an answer: {set(issued) - answered}"
    unknown = [r for r in results if r.reason and "unknown run" in r.reason]
    assert not unknown, f"run {run_id}: a replica that does not train it answered: {unknown}"
    return sum(applied.values())


def check_report(replicas: Stack, run_id: str, epochs: int) -> None:
    report = json.loads((replicas.runs_dir / run_id / "report.json").read_text())
    assert report["epochs"] == epochs
    assert (replicas.runs_dir / run_id / "events.jsonl").is_file()


def test_six_runs_on_three_tolarias_every_command_applied_once_by_the_replica_training_its_run(
    replicas: Stack, bus: Streams
) -> None:
    epochs = 6
    run_ids = submit_runs(bus, "many", epochs)
    finished = wait_all_finished(bus, run_ids, timeout_s=150)

    trainers = {r: finished[r]["trained_by"] for r in run_ids}
    consumers = {consumer_of(replicas, n): n for n in TOLARIAS}
    assert set(trainers.values()) <= set(consumers), trainers
    assert len(set(trainers.values())) >= 2, f"the runs did not spread over the replicas: {trainers}"
    applied_per_replica = dict.fromkeys(TOLARIAS, 0)
    total = 0
    for run_id in run_ids:
        # Each run trained once, start to end, on one replica: nothing failed and was retried.
        assert bus.epochs(run_id) == list(range(1, epochs + 1)), (run_id, bus.epochs(run_id))
        assert finished[run_id]["resumed_from_epoch"] is None
        n = check_commands_applied_once(bus, run_id)
        total += n
        applied_per_replica[consumers[trainers[run_id]]] += n
        # Only the replica that trained the run ever read its commands and decisions.
        assert bus.readers(streams.GROUP_TOLARIA, "commands", run_id) == {trainers[run_id]}
        assert bus.readers(streams.GROUP_TOLARIA, "decisions", run_id) == {trainers[run_id]}
        # One Tamiyo decided each run, every epoch once, in order: each epoch one whole boundary of decisions
        # (index 0 .. count - 1, one per slot at most).
        decisions = [e.payload for e in bus.envelopes(streams.CONTROL_DECISIONS, run_id)]
        firsts = [d.epoch for d in decisions if d.index == 0]
        assert firsts == list(range(1, epochs + 1)), (run_id, firsts)
        count = {d.epoch: d.count for d in decisions if d.index == 0}
        expected = [(e, i, count[e]) for e in firsts for i in range(count[e])]
        assert [(d.epoch, d.index, d.count) for d in decisions] == expected, (run_id, decisions)
        assert len(bus.readers(streams.GROUP_TAMIYO, "telemetry", run_id)) == 1
        check_report(replicas, run_id, epochs)
    assert total >= RUNS, f"too few commands to prove routing: {total}"
    # Each replica's own count of applied commands is exactly what its runs received.
    counted = applied_by_replica(replicas, TOLARIAS)
    assert counted == applied_per_replica, (trainers, {r: bus.applied(r) for r in run_ids})


@pytest.mark.slow
def test_a_tolaria_and_a_tamiyo_sigkilled_mid_run_their_runs_move_and_every_run_finishes(
    replicas: Stack, bus: Streams
) -> None:
    epochs = 10
    run_ids = submit_runs(bus, "kill", epochs)
    # Mid-run: every run has checkpointed an epoch (its second is out) and none is done.
    eventually(lambda: all(len(bus.epochs(r)) >= 2 for r in run_ids), 120, "every run past its second epoch")
    tolaria_owners = {r: bus.owner(streams.GROUP_TOLARIA, r) for r in run_ids}
    tamiyo_owners = {r: bus.owner(streams.GROUP_TAMIYO, r) for r in run_ids}
    victim = next(n for n in TOLARIAS if consumer_of(replicas, n) in tolaria_owners.values())
    brain = next(n for n in TAMIYOS if consumer_of(replicas, n) in tamiyo_owners.values())
    replicas[victim].signal(signal.SIGKILL)
    replicas[brain].signal(signal.SIGKILL)
    dead_tolaria, dead_tamiyo = consumer_of(replicas, victim), consumer_of(replicas, brain)
    moved = [r for r in run_ids if tolaria_owners[r] == dead_tolaria]
    assert moved and all(len(bus.epochs(r)) < epochs for r in moved), "killed after its runs were over"

    finished = wait_all_finished(bus, run_ids, timeout_s=240)

    for run_id in run_ids:
        attrs = finished[run_id]
        assert attrs["trained_by"] != dead_tolaria
        published = bus.epochs(run_id)
        assert sorted(set(published)) == list(range(1, epochs + 1)), (run_id, published)
        assert published.count(1) == 1, f"run {run_id} started over instead of resuming: {published}"
        # Only the epoch in flight at the kill may run twice.
        assert len(published) - len(set(published)) <= 1, (run_id, published)
        check_commands_applied_once(bus, run_id)
        check_report(replicas, run_id, epochs)
        readers = bus.readers(streams.GROUP_TOLARIA, "commands", run_id)
        if run_id in moved:
            assert attrs["resumed_from_epoch"], f"run {run_id} did not resume from its checkpoint"
            assert readers == {dead_tolaria, attrs["trained_by"]}, readers
        else:
            assert readers == {attrs["trained_by"]}, readers
        # Runs the dead Tamiyo decided were adopted by the live one, which went on deciding them.
        if tamiyo_owners[run_id] == dead_tamiyo:
            assert bus.owner(streams.GROUP_TAMIYO, run_id) != dead_tamiyo
            decided = {d.payload.epoch for d in bus.envelopes(streams.CONTROL_DECISIONS, run_id)}
            assert epochs in decided, f"run {run_id}: nobody decided its last epoch ({sorted(decided)})"
