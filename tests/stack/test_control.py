"""The control API against a live run: pause/resume, a forced illegal adaptation, auth, validation, unknown runs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from esper.cli.stack import Stack
from esper.leyline import CommandStatus

from .harness import StackClient, eventually

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_run(stack: Stack) -> Iterator[tuple[StackClient, str]]:
    """A long static run that is training (epoch 1 reached; its slots stay DORMANT); stopped at the end of the
    module. The heuristic would germinate at the first boundary."""
    with StackClient(stack) as client:
        run_id = client.submit("control", epochs=200, lockstep=False, policy="none")
        client.wait_epoch(run_id, 1)
        yield client, run_id
        client.api.post(f"/runs/{run_id}/stop")
        client.wait_finished(run_id)


def applied(client: StackClient, run_id: str, command_id: str) -> bool:
    return any(r.command_id == command_id and r.status is CommandStatus.APPLIED for r in client.results(run_id))


def test_pause_stops_epochs_advancing_and_resume_continues(live_run: tuple[StackClient, str]) -> None:
    client, run_id = live_run
    response = client.api.post(f"/runs/{run_id}/pause", json={"reason": "inspect"})
    assert response.status_code == 202, response.text
    pause = response.json()["command_id"]
    eventually(lambda: applied(client, run_id, pause), 30, "pause applied by Tolaria")
    eventually(lambda: client.status(run_id)["paused"], 10, "Tamiyo shows the run paused")
    paused_at = max(client.epochs(run_id))
    time.sleep(3.0)
    assert max(client.epochs(run_id)) == paused_at, "epochs advanced while paused"

    response = client.api.post(f"/runs/{run_id}/resume")
    assert response.status_code == 202, response.text
    client.wait_epoch(run_id, paused_at + 1, timeout_s=30)
    assert not client.status(run_id)["paused"]


def test_forced_advance_of_a_dormant_slot_is_rejected_with_the_reason(live_run: tuple[StackClient, str]) -> None:
    client, run_id = live_run
    slots = {s["slot_id"]: s["stage"] for s in client.status(run_id)["slots"]}
    dormant = next(slot for slot, stage in slots.items() if stage == "DORMANT")
    response = client.api.post(f"/runs/{run_id}/adaptations", json={"action": "advance", "slot_id": dormant})
    assert response.status_code == 409, response.text
    reason = response.json()["reason"]
    assert dormant in reason and "DORMANT" in reason


def test_mutations_need_the_right_token(stack: Stack) -> None:
    url = f"{stack['tamiyo'].url}/runs"
    missing = httpx.post(url, json={"epochs": 1})
    assert missing.status_code == 401, missing.text
    wrong = httpx.post(url, json={"epochs": 1}, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403, wrong.text


def test_invalid_input_is_422_naming_the_field(client: StackClient) -> None:
    response = client.api.post("/runs", json={"epochs": 0})
    assert response.status_code == 422
    assert "epochs" in response.text


def test_an_unknown_precision_is_422_naming_the_field_and_value(client: StackClient) -> None:
    response = client.api.post("/runs", json={"precision": "fp16"})
    assert response.status_code == 422
    assert "precision" in response.text and "fp16" in response.text, response.text


def test_an_unknown_run_is_404(client: StackClient) -> None:
    assert client.api.get("/runs/no-such-run").status_code == 404
    assert client.api.post("/runs/no-such-run/pause").status_code == 404
