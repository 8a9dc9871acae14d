"""The control API's security pass: every route needs a token (walked from the OpenAPI document), the
read-only token reads and changes nothing, oversized bodies get 413, CORS is off unless configured, and
tokens never reach a log or a settings repr."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from esper.service import ServiceSettings, add_arguments, settings_from
from esper.tamiyo.api import create_app

from .scenario import stack

TOKEN = "operator-s3cret-token"
READ_TOKEN = "reader-s3cret-token"
#: Routes open to anyone: probes and Prometheus need no token (documented in esper.tamiyo.api).
OPEN = {"/healthz", "/readyz", "/metrics"}
LIMIT = 2048


def make_app(redis_url: str, **options):
    s = asyncio.run(stack(redis_url, restore=False))
    options = {"api_token": TOKEN, "read_token": READ_TOKEN, "max_body_bytes": LIMIT, **options}
    return create_app(s.control, registries=(s.metrics.registry,), **options)


@pytest.fixture
def api(clean_redis_url) -> Iterator[TestClient]:
    with TestClient(make_app(clean_redis_url)) as client:
        yield client


def operations(api: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, path parameters filled in."""
    paths = api.app.openapi()["paths"]
    return [
        (method.upper(), path.replace("{run_id}", "some-run"))
        for path, item in paths.items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_document_lists_the_routes_we_expect(api):
    found = {path for _, path in operations(api)}
    assert OPEN <= found
    assert {"/runs", "/runs/some-run", "/runs/some-run/pause", "/runs/some-run/adaptations"} <= found
    assert len(operations(api)) >= 10


def test_every_route_but_health_and_metrics_refuses_a_missing_or_wrong_token(api):
    guarded = [(m, p) for m, p in operations(api) if p not in OPEN]
    for method, path in guarded:
        missing = api.request(method, path, json={})
        assert missing.status_code == 401, f"{method} {path} without a token: {missing.status_code}"
        assert missing.headers["www-authenticate"] == "Bearer"
        for wrong in ("nope", TOKEN + "x", TOKEN[:-1], READ_TOKEN.upper()):
            response = api.request(method, path, json={}, headers=bearer(wrong))
            assert response.status_code == 403, f"{method} {path} with a wrong token: {response.status_code}"
            assert wrong not in response.text
        basic = api.request(method, path, json={}, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code in (401, 403), f"{method} {path} with Basic auth: {basic.status_code}"


def test_health_and_metrics_need_no_token(api):
    for method, path in operations(api):
        if path in OPEN:
            assert api.request(method, path).status_code == 200, path


def test_the_read_token_reads_and_changes_nothing(api):
    assert api.post("/runs", json={"run_id": "r1", "task": "digits"}, headers=bearer(TOKEN)).status_code == 202
    reads = [(m, p) for m, p in operations(api) if m == "GET" and p not in OPEN]
    writes = [(m, p.replace("some-run", "r1")) for m, p in operations(api) if m != "GET" and p not in OPEN]
    assert reads and writes
    for method, path in reads:
        for token in (READ_TOKEN, TOKEN):
            response = api.request(method, path.replace("some-run", "r1"), headers=bearer(token))
            assert response.status_code == 200, f"{method} {path}: {response.text}"
    for method, path in writes:
        response = api.request(method, path, json={}, headers=bearer(READ_TOKEN))
        assert response.status_code == 403 and "read-only token" in response.json()["reason"], path
    assert api.get("/runs/r1", headers=bearer(READ_TOKEN)).json()["paused"] is False


def test_with_only_a_read_token_reads_work_and_mutations_are_503(clean_redis_url):
    with TestClient(make_app(clean_redis_url, api_token=None)) as client:
        assert client.get("/runs", headers=bearer(READ_TOKEN)).status_code == 200
        response = client.post("/runs", json={}, headers=bearer(READ_TOKEN))
        assert response.status_code == 503 and "ESPER_API_TOKEN" in response.json()["reason"]


def test_a_body_over_the_limit_is_413_before_anything_reads_it(api):
    big = {"run_id": "big", "task": "digits", "reason": "x" * (2 * LIMIT)}
    response = api.post("/runs", json=big, headers=bearer(TOKEN))
    assert response.status_code == 413 and f"limit of {LIMIT} bytes" in response.json()["reason"]
    # Streamed without Content-Length (chunked): refused once it passes the limit.
    chunks = (b'{"run_id": "big2", "task": "digits", "pad": "' + b"y" * 512 for _ in range(8))
    response = api.post("/runs", content=chunks, headers={**bearer(TOKEN), "Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    # Without a token the body limit still answers first: nothing is read.
    assert api.post("/runs", json=big).status_code == 413
    assert api.get("/runs", headers=bearer(TOKEN)).json() == []
    # Under the limit all is as usual.
    assert api.post("/runs", json={"run_id": "small", "task": "digits"}, headers=bearer(TOKEN)).status_code == 202


def test_cors_is_off_unless_configured(clean_redis_url):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(make_app(clean_redis_url)) as client:
        response = client.options("/runs", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
        response = client.get("/runs", headers={**bearer(TOKEN), "Origin": "https://evil.example"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    with TestClient(make_app(clean_redis_url, cors_origins=["https://ops.example"])) as client:
        allowed = client.options("/runs", headers={**preflight, "Origin": "https://ops.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://ops.example"
        refused = client.options("/runs", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


def test_tokens_never_reach_the_logs(api, caplog):
    caplog.set_level(logging.DEBUG)
    api.post("/runs", json={"run_id": "logged", "task": "digits"}, headers=bearer(TOKEN))
    api.get("/runs", headers=bearer(READ_TOKEN))
    api.get("/runs", headers=bearer("wrong-" + TOKEN))
    api.post("/runs/logged/pause", headers=bearer(READ_TOKEN))
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert TOKEN not in text and READ_TOKEN not in text


def test_settings_read_tokens_limits_and_origins_and_never_show_tokens(monkeypatch):
    monkeypatch.setenv("ESPER_API_TOKEN", TOKEN)
    monkeypatch.setenv("ESPER_API_READ_TOKEN", READ_TOKEN)
    monkeypatch.setenv("ESPER_API_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("ESPER_API_CORS_ORIGINS", "https://a.example, https://b.example")
    parser = argparse.ArgumentParser()
    add_arguments(parser, "tamiyo")
    settings = settings_from(parser.parse_args([]), "tamiyo")
    assert (settings.api_token, settings.read_token) == (TOKEN, READ_TOKEN)
    assert settings.max_body_bytes == 4096
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert TOKEN not in repr(settings) and READ_TOKEN not in repr(settings)
    monkeypatch.setenv("ESPER_API_MAX_BODY_BYTES", "lots")
    with pytest.raises(SystemExit, match=r"ESPER_API_MAX_BODY_BYTES.*'lots'"):
        settings_from(parser.parse_args([]), "tamiyo")


def test_settings_made_the_old_way_still_work():
    """Services built before the read token (Urza) construct settings positionally: still valid."""
    from pathlib import Path

    settings = ServiceSettings("urza", "redis://x", "127.0.0.1", 1, "c", Path("runs"), "t", "INFO")
    assert settings.read_token is None and settings.cors_origins == () and settings.max_body_bytes > 0
