"""One run in two processes (torch.distributed, gloo on CPU) through ``esper train --nproc 2``.

The same job trained in one process and in two (the same global batch, each
rank a half of it) must be the same run: every rank sees the same seed events,
the ranks' parameters are identical after every epoch, and the final accuracy
is that of the one-process run within noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from esper.cli.redis_local import free_port
from esper.cli.stack import ServiceSpec, Stack
from esper.leyline import AdaptationCommand, CommandAction, Envelope, encode, streams

from .replicas import Streams, eventually

FIELD = streams.ENVELOPE_FIELD.encode()

#: Small enough for two contended cores; a learning rate that makes the heuristic grow seeds early.
ARGS = [
    "train", "--task", "mnist1d", "--epochs", "5", "--max-train-samples", "400", "--lr", "0.003",
    "--lr-schedule", "constant", "--no-progress",
]  # fmt: skip
#: Different summation order across shards may move a few test rows; anything more is a different run.
ACCURACY_NOISE = 0.02


def esper(*args: str) -> subprocess.Popen[bytes]:
    code = "import sys; from esper.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_ranks_train_one_run_identically_and_match_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    procs = {"two": esper(*ARGS, "--out", str(two), "--nproc", "2"), "one": esper(*ARGS, "--out", str(one))}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"esper train ({name}) failed:\n{out.decode()[-3000:]}"

    ranks = json.loads((two / "ranks.json").read_text())
    assert ranks["world_size"] == 2
    # Parameters identical across ranks after every epoch.
    assert len(ranks["max_divergence_per_epoch"]) == 5
    assert max(ranks["max_divergence_per_epoch"]) == 0.0, ranks["max_divergence_per_epoch"]
    # The same seed events on every rank, and there were some.
    leader, follower = ranks["seed_events"]
    assert leader and leader == follower
    report_two = json.loads((two / "report.json").read_text())
    report_one = json.loads((one / "report.json").read_text())
    assert report_two["epochs"] == report_one["epochs"] == 5
    assert abs(report_two["final_test_accuracy"] - report_one["final_test_accuracy"]) <= ACCURACY_NOISE
    # The ranks grew the seeds the one-process run grew.
    events_one = [
        (e["epoch"], e["slot_id"], e["to_stage"])
        for e in map(json.loads, (one / "events.jsonl").read_text().splitlines())
        if e.get("type") == "seed_transition"
    ]
    assert [(epoch, slot) for epoch, slot, *_ in leader] == [(epoch, slot) for epoch, slot, _ in events_one]


@pytest.mark.slow
def test_the_service_trains_a_two_process_job_and_every_rank_applies_its_commands(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    stack = Stack(
        [ServiceSpec("tolaria", "esper.tolaria.service", free_port(), ("--torch-threads", "1"))],
        redis_url=redis_url,
        runs_dir=tmp_path / "runs",
        logs_dir=tmp_path / "logs",
    ).start(supervise=False)
    bus = Streams(redis_url)
    try:
        stack.wait_ready(timeout_s=120)
        run_id = "ddp-service"
        bus.submit(run_id, policy="none", epochs=6, lockstep=False, world_size=2, max_train_samples=400)
        # Sent with the job (commands for a queued run wait for it), so they reach it before its last boundary
        # however fast it trains: PAUSE holds the run at a boundary; RESUME is applied there (on every rank).
        for i, action in enumerate((CommandAction.PAUSE, CommandAction.RESUME)):
            command = AdaptationCommand(command_id=f"op-{i}", action=action)
            client.xadd(streams.CONTROL_COMMANDS, {FIELD: encode(Envelope(payload=command, run_id=run_id))})
        done = eventually(lambda: bus.finished(run_id), 180, "run_finished")
        assert done.attributes["world_size"] == 2
        assert done.attributes["rank_divergence"] == 0.0
        assert bus.epochs(run_id) == list(range(1, 7))
        assert sorted(bus.applied(run_id)) == ["op-0", "op-1"]
        report = json.loads((stack.runs_dir / run_id / "report.json").read_text())
        assert report["epochs"] == 6
    finally:
        bus.close()
        stack.stop()
        client.close()
