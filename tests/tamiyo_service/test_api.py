"""The control API over a real Redis: runs, status, run control, forced adaptations, policy, auth and validation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    SeedStage,
    TrainingJob,
)
from esper.leyline import streams as ls
from esper.tamiyo.api import create_app

from .scenario import envelope, published, signals, stack

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(clean_redis_url) -> Iterator[TestClient]:
    """The app on a real Redis; one event loop for the whole test (``client.portal`` runs coroutines in it)."""
    with TestClient(create_app_on(clean_redis_url, TOKEN)) as client:
        yield client


def create_app_on(redis_url: str, token: str | None):
    import asyncio

    s = asyncio.run(stack(redis_url, restore=False))
    app = create_app(s.control, api_token=token, registries=(s.metrics.registry,))
    app.state.stack = s
    return app


def submit(api: TestClient, **fields) -> str:
    response = api.post("/runs", json={"task": "digits", "epochs": 5, **fields}, headers=AUTH)
    assert response.status_code == 202, response.text
    return response.json()["run_id"]


def feed(api: TestClient, run_id: str, *epochs_signals) -> None:
    loop = api.app.state.stack.loop
    for message in epochs_signals:
        api.portal.call(loop.handle, envelope(run_id, message))


def test_a_submitted_run_is_listed_at_once_and_its_job_published(api, clean_redis_url):
    run_id = submit(api, run_id="run-abc", seed=3, lockstep=True)
    assert run_id == "run-abc"
    listed = api.get("/runs", headers=AUTH).json()
    assert [r["run_id"] for r in listed] == ["run-abc"] and listed[0]["policy"] == "heuristic-per-slot"
    jobs = published(clean_redis_url, ls.CONTROL_JOBS)
    assert jobs[0].run_id == "run-abc"
    assert jobs[0].payload == TrainingJob(task="digits", epochs=5, seed=3, lockstep=True)


def test_a_run_id_is_generated_when_none_is_given(api):
    assert submit(api).startswith("run-")


def test_a_taken_run_id_is_a_conflict(api):
    submit(api, run_id="dup")
    response = api.post("/runs", json={"run_id": "dup"}, headers=AUTH)
    assert response.status_code == 409 and "already exists" in response.json()["reason"]


def test_status_shows_slots_decisions_and_flags(api):
    run_id = submit(api, policy="heuristic-per-slot")  # several decisions per boundary, each listed
    feed(api, run_id, *(signals(e) for e in range(3)))
    body = api.get(f"/runs/{run_id}", headers=AUTH).json()
    assert body["epoch"] == 2 and body["val_accuracy"] == 0.5 and body["train_loss"] == 1.0
    assert [s["slot_id"] for s in body["slots"]] == ["s1", "s2", "s3"] and body["slots"][0]["stage"] == "DORMANT"
    # epoch 0 waits; epochs 1 and 2 each germinate every slot (the telemetry still shows them dormant)
    shown = [(d["epoch"], d["action"], d["slot_id"], d["command_id"]) for d in body["decisions"]]
    assert shown == [(0, "wait", None, None)] + [
        (e, "germinate", s, f"{run_id}:e{e}:germinate:{s}") for e in (1, 2) for s in ("s1", "s2", "s3")
    ]
    last = body["decisions"][-1]
    assert last["accepted"] and 0 < last["confidence"] <= 1 and last["reason"]
    assert body["paused"] is False and body["finished"] is False and body["policy"] == "heuristic-per-slot"


def test_non_finite_telemetry_is_shown_as_null(api):
    run_id = submit(api)
    feed(api, run_id, signals(0).__class__(**{**signals(0).to_dict(), "val_loss": float("nan"), "seeds": []}))
    assert api.get(f"/runs/{run_id}", headers=AUTH).json()["val_loss"] is None


def test_pause_and_resume_publish_operator_commands_and_flip_the_flag(api, clean_redis_url):
    run_id = submit(api)
    response = api.post(f"/runs/{run_id}/pause", headers=AUTH)
    assert response.status_code == 202 and api.get(f"/runs/{run_id}", headers=AUTH).json()["paused"] is True
    assert api.post(f"/runs/{run_id}/resume", json={"reason": "go on"}, headers=AUTH).status_code == 202
    assert api.get(f"/runs/{run_id}", headers=AUTH).json()["paused"] is False
    commands = [e.payload for e in published(clean_redis_url, ls.CONTROL_COMMANDS)]
    assert [c.action for c in commands] == [CommandAction.PAUSE, CommandAction.RESUME]
    assert commands[0].command_id == response.json()["command_id"] and commands[0].issued_by == "operator"
    assert commands[1].reason == "go on"


def test_a_stopped_run_refuses_further_control(api):
    run_id = submit(api)
    assert api.post(f"/runs/{run_id}/stop", headers=AUTH).status_code == 202
    response = api.post(f"/runs/{run_id}/pause", headers=AUTH)
    assert response.status_code == 409 and "stopped" in response.json()["reason"]


def test_a_legal_forced_adaptation_is_published(api, clean_redis_url):
    run_id = submit(api)
    feed(api, run_id, signals(0))
    body = {"action": "germinate", "slot_id": "s2", "blueprint": "conv_light", "reason": "try it"}
    response = api.post(f"/runs/{run_id}/adaptations", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    command = published(clean_redis_url, ls.CONTROL_COMMANDS)[-1].payload
    assert isinstance(command, AdaptationCommand) and command.command_id == response.json()["command_id"]
    assert (command.action, command.slot_id, command.blueprint) == (CommandAction.GERMINATE, "s2", "conv_light")
    assert command.issued_by == "operator" and not command.override and command.epoch == 0


def test_a_forced_illegal_adaptation_is_rejected_with_the_reason(api, clean_redis_url):
    run_id = submit(api)
    feed(api, run_id, signals(0))
    response = api.post(f"/runs/{run_id}/adaptations", json={"action": "advance", "slot_id": "s1"}, headers=AUTH)
    assert response.status_code == 409
    assert response.json()["reason"].startswith("illegal_transition: ") and "DORMANT" in response.json()["reason"]
    assert published(clean_redis_url, ls.CONTROL_COMMANDS) == []
    decision = published(clean_redis_url, ls.CONTROL_DECISIONS)[-1].payload
    assert isinstance(decision, AdaptationDecision) and decision.policy == "operator" and not decision.accepted
    status = api.get(f"/runs/{run_id}", headers=AUTH).json()["decisions"][-1]
    assert status["rejection_reason"] == response.json()["reason"]


def test_override_bypasses_the_safety_monitor(api, clean_redis_url):
    run_id = submit(api)
    feed(api, run_id, signals(0, {"s1": SeedStage.EMBARGOED}))
    body = {"action": "germinate", "slot_id": "s1", "blueprint": "conv_light"}
    assert api.post(f"/runs/{run_id}/adaptations", json=body, headers=AUTH).status_code == 409
    response = api.post(f"/runs/{run_id}/adaptations", json={**body, "override": True}, headers=AUTH)
    assert response.status_code == 202
    assert published(clean_redis_url, ls.CONTROL_COMMANDS)[-1].payload.override is True


def test_switching_the_policy_takes_effect_on_the_next_epoch(api, clean_redis_url):
    run_id = submit(api)
    response = api.put(f"/runs/{run_id}/policy", json={"policy": "none"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["policy"] == "none"
    feed(api, run_id, *(signals(e) for e in range(4)))
    decisions = [e.payload for e in published(clean_redis_url, ls.CONTROL_DECISIONS)]
    assert {d.policy for d in decisions} == {"none"} and {d.action.value for d in decisions} == {"wait"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/runs", {}),
        ("post", "/runs/x/pause", None),
        ("post", "/runs/x/resume", None),
        ("post", "/runs/x/stop", None),
        ("post", "/runs/x/adaptations", {"action": "cull", "slot_id": "s1"}),
        ("put", "/runs/x/policy", {"policy": "none"}),
    ],
)
def test_mutating_routes_need_the_bearer_token(api, method, path, body):
    missing = api.request(method, path, json=body)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["reason"]
    wrong = api.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["reason"] == "wrong bearer token"


def test_without_a_configured_token_everything_but_health_is_refused(clean_redis_url):
    with TestClient(create_app_on(clean_redis_url, None)) as client:
        response = client.post("/runs", json={}, headers=AUTH)
        assert response.status_code == 503 and "ESPER_API_TOKEN" in response.json()["reason"]
        response = client.get("/runs", headers=AUTH)
        assert response.status_code == 503 and "ESPER_API_READ_TOKEN" in response.json()["reason"]


def test_an_unknown_run_is_404(api):
    assert api.get("/runs/nope", headers=AUTH).status_code == 404
    response = api.post("/runs/nope/adaptations", json={"action": "cull", "slot_id": "s1"}, headers=AUTH)
    assert response.status_code == 404 and "nope" in response.json()["reason"]
    assert api.post("/runs/nope/stop", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "explode", "slot_id": "s1"}, "action"),
        ({"action": "germinate", "slot_id": "s1"}, "blueprint"),
        ({"action": "germinate", "slot_id": "s1", "blueprint": ""}, "blueprint"),
        ({"action": "cull", "slot_id": ""}, "slot_id"),
        ({"action": "cull"}, "slot_id"),
        ({"action": "cull", "slot_id": "s1", "surprise": 1}, "surprise"),
    ],
)
def test_bad_adaptations_are_422_naming_the_field(api, body, field):
    run_id = submit(api)
    response = api.post(f"/runs/{run_id}/adaptations", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"task": "imagenet"}, "task"),
        ({"policy": "ppo"}, "policy"),
        ({"lr": -1}, "lr"),
        ({"run_id": "bad id!"}, "run_id"),
        ({"seed": 2**70}, "seed"),
    ],
)
def test_bad_jobs_are_422_naming_the_field(api, body, field):
    response = api.post("/runs", json=body, headers=AUTH)
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


def test_health_routes_and_metrics(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    run_id = submit(api)
    feed(api, run_id, *(signals(e) for e in range(2)))
    text = api.get("/metrics").text
    assert "esper_tamiyo_decision_latency_seconds_bucket" in text and "esper_tamiyo_policy_seconds_count" in text
    # epoch 0 waits, epoch 1 germinates in each of the three slots (the default heuristic decides once per slot)
    assert 'esper_tamiyo_decisions_total{action="germinate",issued_by="heuristic"} 3.0' in text
    assert 'esper_tamiyo_decisions_total{action="wait",issued_by="heuristic"} 1.0' in text
    assert api.get("/docs").status_code == 200
    assert "/runs/{run_id}/adaptations" in api.get("/openapi.json").json()["paths"]
