"""The control API across a Redis restart and outage: no hang, no 500, no phantom run.

Reproduces issue 14's sequence on a real ``redis-server`` (append-only file on):
runs submitted, Redis restarted, another run submitted. The pooled connections
died with the restart; the submission must be answered at once with its job on
the stream. While Redis is down a submission is refused with 503 and
``Retry-After`` within the deadline, and nothing of it is left behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from esper.leyline import TrainingJob
from esper.leyline import streams as ls
from esper.tamiyo.api import create_app
from esper.tamiyo.collector import INDEX_KEY, KEY_PREFIX
from esper.tamiyo.service.control import Unavailable

from .scenario import published, stack

TOKEN = "outage-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The control's deadline here: short, so that the refused submission is quick.
DEADLINE_S = 1.5


@pytest.fixture
def server(redis_server_factory):
    return redis_server_factory(durable=True)


@pytest.fixture
def api(server) -> Iterator[TestClient]:
    s = asyncio.run(stack(server.url, restore=False))
    s.control.deadline_s = DEADLINE_S
    s.bus.publish_timeout_s = DEADLINE_S
    app = create_app(s.control, api_token=TOKEN, registries=(s.metrics.registry,))
    with TestClient(app) as client:
        yield client


def post(api: TestClient, run_id: str) -> tuple[int, dict, dict, float]:
    started = time.monotonic()
    response = api.post("/runs", json={"task": "digits", "epochs": 3, "run_id": run_id}, headers=AUTH)
    return response.status_code, response.json(), dict(response.headers), time.monotonic() - started


def listed(api: TestClient) -> list[str]:
    response = api.get("/runs", headers=AUTH)
    assert response.status_code == 200, response.text
    return [r["run_id"] for r in response.json()]


def jobs_on_stream(url: str) -> list[str]:
    return [e.run_id for e in published(url, ls.CONTROL_JOBS)]


def saved(url: str) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        ids = {m.decode() for m in client.smembers(INDEX_KEY)}
        assert ids == {k.decode()[len(KEY_PREFIX) :] for k in client.keys(KEY_PREFIX + "*")}
        return ids
    finally:
        client.close()


def test_a_submission_after_a_redis_restart_is_enqueued_at_once(api, server):
    assert post(api, "before")[0] == 202  # the pools now hold connections that the restart kills
    server.stop()
    server.start()

    status, body, _, took = post(api, "after")

    assert status == 202, body
    assert took < DEADLINE_S, f"answered after {took:.1f}s"
    assert jobs_on_stream(server.url) == ["before", "after"]
    assert listed(api) == ["before", "after"]
    assert saved(server.url) == {"before", "after"}


def test_a_submission_while_redis_is_down_is_refused_and_leaves_nothing_behind(api, server):
    assert post(api, "before")[0] == 202
    server.stop()

    status, body, headers, took = post(api, "during")

    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert "Redis unavailable" in body["reason"] and "not enqueued" in body["reason"]
    assert took < DEADLINE_S + 2.0, f"answered after {took:.1f}s (deadline {DEADLINE_S}s)"
    assert listed(api) == ["before"]

    server.start()
    assert jobs_on_stream(server.url) == ["before"]
    assert saved(server.url) == {"before"}
    # The refused run was forgotten: submitting it again works, and a retry of that answers the same id.
    assert post(api, "during")[:2] == (202, {"run_id": "during"})
    assert post(api, "during")[:2] == (202, {"run_id": "during"})
    assert jobs_on_stream(server.url) == ["before", "during"]
    assert listed(api) == ["before", "during"]


def test_run_control_while_redis_is_down_is_refused_and_changes_nothing(api, server):
    assert post(api, "steered")[0] == 202
    server.stop()

    response = api.post("/runs/steered/pause", headers=AUTH)

    assert response.status_code == 503 and "retry-after" in response.headers, response.text
    assert "the run is unchanged" in response.json()["reason"]
    assert api.get("/runs/steered", headers=AUTH).json()["paused"] is False
    server.start()
    assert api.post("/runs/steered/pause", headers=AUTH).status_code == 202
    assert api.get("/runs/steered", headers=AUTH).json()["paused"] is True


def test_a_retry_racing_a_failing_submission_is_refused_too(server):
    async def race():
        s = await stack(server.url, restore=False)
        s.control.deadline_s = s.bus.publish_timeout_s = DEADLINE_S
        server.stop()
        job = TrainingJob(task="digits", epochs=3)
        try:
            answers = await asyncio.gather(
                s.control.submit(job, "race"), s.control.submit(job, "race"), return_exceptions=True
            )
            return answers, [r.run_id for r in s.collector.all()]
        finally:
            await s.aclose()

    answers, listed = asyncio.run(race())

    assert all(isinstance(a, Unavailable) for a in answers), answers
    assert listed == []
