"""``esper runs ...`` against a running Tamiyo service (a real process on a real Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from esper.cli.main import main
from esper.cli.redis_local import free_port
from esper.leyline import Envelope, SeedStage, SeedStateReport, TrainingSignals
from esper.leyline import streams as ls
from esper.oona import RedisBus

TOKEN = "cli-token"


@pytest.fixture(scope="module")
def api_url(redis_url, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "ESPER_API_TOKEN": TOKEN}
    args = ["--redis-url", redis_url, "--port", str(port), "--consumer", "tamiyo-cli-test", "--log-level", "WARNING"]
    args += ["--runs-dir", str(tmp_path_factory.mktemp("runs"))]
    process = subprocess.Popen([sys.executable, "-m", "esper.tamiyo.service", *args], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"tamiyo exited with {process.returncode}"
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tamiyo never became ready"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def esper(api_url, monkeypatch, capsys):
    """``esper runs ARGS`` in process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("ESPER_API_TOKEN", TOKEN)

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(["runs", "--api", api_url, *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def epoch_zero(redis_url: str, run_id: str) -> None:
    signals = TrainingSignals(
        epoch=0,
        train_loss=1.0,
        val_loss=1.0,
        train_accuracy=0.5,
        val_accuracy=0.5,
        seeds=[SeedStateReport(slot_id=s, stage=SeedStage.DORMANT) for s in ("s1", "s2", "s3")],
    )

    async def go() -> None:
        bus = RedisBus.from_url(redis_url)
        await bus.publish(ls.TELEMETRY_TRAINING, Envelope(payload=signals, run_id=run_id))
        await bus.aclose()

    asyncio.run(go())


def wait_epoch(api_url: str, run_id: str) -> None:
    deadline = time.monotonic() + 30
    auth = {"Authorization": f"Bearer {TOKEN}"}
    while httpx.get(f"{api_url}/runs/{run_id}", headers=auth).json()["last_decided_epoch"] != 0:
        assert time.monotonic() < deadline, "epoch 0 never decided"
        time.sleep(0.05)


def test_submit_list_show(esper):
    code, out, _ = esper("submit", "--run-id", "cli-a", "--task", "digits", "--epochs", "7", "--lockstep")
    assert code == 0 and out.strip() == "submitted cli-a"
    code, out, _ = esper("list")
    assert code == 0 and "cli-a" in out and "digits" in out and "submitted" in out
    code, out, _ = esper("--json", "show", "cli-a")
    assert code == 0 and json.loads(out)["job"]["lockstep"] is True and json.loads(out)["epochs"] == 7


def test_submit_passes_the_run_shape_a_local_run_takes(esper):
    shape = ["--steps-per-epoch", "4", "--no-lengthen-settled", "--host-wait-steps", "8", "--no-isolate-seeds"]
    assert esper("submit", "--run-id", "cli-shape", "--task", "digits", *shape)[0] == 0
    job = json.loads(esper("--json", "show", "cli-shape")[1])["job"]
    assert (job["steps_per_epoch"], job["lengthen_settled"], job["host_wait_steps"], job["isolate_seeds"]) == (
        4, False, 8, False
    )  # fmt: skip


def test_pause_resume_stop_and_policy(esper):
    esper("submit", "--run-id", "cli-b", "--task", "digits")
    code, out, _ = esper("pause", "cli-b", "--reason", "look at it")
    assert code == 0 and out.startswith("pause sent to cli-b (command ")
    assert "paused" in esper("show", "cli-b")[1]
    assert esper("resume", "cli-b")[0] == 0
    code, out, _ = esper("policy", "cli-b", "none")
    assert code == 0 and "now uses policy none" in out
    assert esper("stop", "cli-b")[0] == 0
    code, _, err = esper("pause", "cli-b")
    assert code == 1 and "409" in err and "stopped" in err


def test_adapt_prints_the_safety_monitors_reason(esper, api_url, redis_url):
    esper("submit", "--run-id", "cli-c", "--task", "digits")
    epoch_zero(redis_url, "cli-c")
    wait_epoch(api_url, "cli-c")
    code, _, err = esper("adapt", "cli-c", "--action", "advance", "--slot", "s1")
    assert code == 1 and "409" in err and "illegal_transition: slot 's1'" in err
    code, out, _ = esper(
        "adapt",
        "cli-c",
        "--action",
        "germinate",
        "--slot",
        "s2",
        "--blueprint",
        "conv_light",
        "--config",
        "kernel_size=3",
    )
    assert code == 0 and "germinate s2 accepted: command" in out
    code, out, _ = esper("show", "cli-c")
    assert "slot s1: DORMANT" in out and "REJECTED (illegal_transition" in out and "by operator" in out


def test_errors_name_the_status_and_the_field(esper, monkeypatch):
    code, _, err = esper("show", "missing-run")
    assert code == 1 and "404" in err and "missing-run" in err
    code, _, err = esper("submit", "--epochs", "0")
    assert code == 1 and "422" in err and "epochs: Input should be greater than or equal to 1 (value 0)" in err
    code, _, err = esper("submit", "--precision", "fp16")
    assert code == 1 and "precision: Input should be 'bf16' or 'fp32' (value 'fp16')" in err
    monkeypatch.setenv("ESPER_API_TOKEN", "wrong")
    code, _, err = esper("submit")
    assert code == 1 and "403" in err and "wrong bearer token" in err
    monkeypatch.delenv("ESPER_API_TOKEN")
    code, _, err = esper("stop", "cli-a")
    assert code == 1 and "401" in err


def test_an_unreachable_api_is_a_clear_error(capsys):
    code = main(["runs", "--api", f"http://127.0.0.1:{free_port()}", "list"])
    assert code == 1 and "cannot reach the control API" in capsys.readouterr().err


def test_the_cli_starts_without_importing_torch() -> None:
    # `esper runs ...` talks HTTP: loading torch (seconds) is for the commands that train
    probe = "import sys, esper.cli.main; print(sorted(m for m in ('torch', 'esper.tolaria') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
