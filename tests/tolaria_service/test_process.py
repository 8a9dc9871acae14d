"""``python -m esper.tolaria.service`` as a real process: HTTP health and metrics, SIGKILL and resume, SIGTERM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from esper.leyline import CommandAction, CommandStatus, streams
from esper.tolaria.checkpoint import read_checkpoint

from .harness import Bus, TolariaProcess, wait_until

pytestmark = pytest.mark.slow

# Runs long enough that the test's signal (a kill, SIGTERM) lands mid-run: tiny epochs take tens of
# milliseconds on a quiet machine, so a short run could finish between "two epochs seen" and the signal.
KILL_EPOCHS = 30
TERM_EPOCHS = 30


@pytest.fixture
def process(clean_redis_url: str, tmp_path: Path) -> Iterator[TolariaProcess]:
    proc = TolariaProcess(clean_redis_url, tmp_path / "runs", tmp_path / "tolaria.log")
    try:
        yield proc
    finally:
        if proc.process is not None and proc.process.poll() is None:
            proc.kill()


def test_health_and_metrics_over_http_and_sigterm_exits_cleanly(process: TolariaProcess, bus: Bus) -> None:
    process.start()
    assert httpx.get(f"{process.url}/healthz", timeout=5).json() == {"status": "ok"}
    bus.submit("run-http", epochs=2)
    bus.wait_finished("run-http")
    bus.command("run-gone", "cmd-1", CommandAction.PAUSE)
    wait_until(lambda: bus.result_of("run-gone", "cmd-1"), 30, "the unknown run's result")
    metrics = wait_until(
        lambda: (m := process.metrics()).get("esper_tolaria_epochs_total") == 2 and m, 10, "metrics after the run"
    )
    assert metrics["esper_tolaria_active_runs"] == 0
    assert metrics["esper_tolaria_epoch_seconds_count"] == 2
    assert metrics["esper_tolaria_commands_total{action=pause,status=rejected}"] == 1
    assert "esper_oona_published_total{stream=esper.telemetry.training}" in metrics
    assert process.terminate() == 0


def test_sigkill_mid_run_then_restart_resumes_from_the_checkpoint_and_finishes(
    process: TolariaProcess, bus: Bus, tmp_path: Path
) -> None:
    process.start()
    bus.submit("run-crash", epochs=KILL_EPOCHS, max_train_samples=600)
    wait_until(lambda: len(bus.signals("run-crash")) >= 3, 120, "three epochs")
    process.kill()
    checkpoint = read_checkpoint(tmp_path / "runs" / "run-crash")
    saved = checkpoint["epoch"]
    published_before = [s.epoch for s in bus.signals("run-crash")]
    assert saved >= 2 and bus.pending(streams.CONTROL_JOBS) == 1  # the job was not acked

    # a command sent while Tolaria is down waits for the resumed run instead of being rejected as unknown
    bus.command("run-crash", "op-germ", CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light")
    process.start()
    finished = bus.wait_finished("run-crash", timeout_s=180)
    assert finished.attributes["resumed_from_epoch"] == saved
    (germ,) = bus.result_of("run-crash", "op-germ")
    assert germ.status is CommandStatus.APPLIED and germ.epoch > saved

    epochs = [s.epoch for s in bus.signals("run-crash")]
    assert sorted(set(epochs)) == list(range(1, KILL_EPOCHS + 1))  # the epoch numbers continue to the end
    for epoch in range(1, saved + 1):
        assert epochs.count(epoch) == 1  # checkpointed epochs never run again
    assert epochs.count(saved + 1) <= 2  # only the epoch in flight at the kill may be published twice
    assert all(epochs.count(e) == 1 for e in range(saved + 2, KILL_EPOCHS + 1))
    assert set(published_before) <= set(range(1, saved + 2))

    report = json.loads(Path(str(finished.attributes["report"])).read_text())
    assert [r["epoch"] for r in report["history"]] == list(range(1, KILL_EPOCHS + 1))
    events = (tmp_path / "runs" / "run-crash" / "events.jsonl").read_text().splitlines()
    logged = [json.loads(line)["epoch"] for line in events if json.loads(line)["type"] == "training_signals"]
    assert logged == list(range(1, KILL_EPOCHS + 1))  # the run's own event log holds each epoch once
    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the job to be acked after the resumed run")
    assert process.terminate() == 0


def test_sigterm_mid_run_leaves_the_job_pending_and_a_restart_finishes_it(
    process: TolariaProcess, bus: Bus, tmp_path: Path
) -> None:
    process.start()
    bus.submit("run-term", epochs=TERM_EPOCHS)
    wait_until(lambda: len(bus.signals("run-term")) >= 2, 120, "two epochs")
    assert process.terminate() == 0
    saved = read_checkpoint(tmp_path / "runs" / "run-term")["epoch"]
    assert saved == max(s.epoch for s in bus.signals("run-term"))  # graceful: stopped at a checkpointed boundary
    assert bus.pending(streams.CONTROL_JOBS) == 1
    process.start()
    bus.wait_finished("run-term", timeout_s=180)
    epochs = [s.epoch for s in bus.signals("run-term")]
    assert epochs == list(range(1, TERM_EPOCHS + 1))
