"""Fuzzing Urza's OpenAPI schema finds no server error, on SQLite and PostgreSQL (bounded examples per operation)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
import schemathesis
from conftest import AUTH, TOKEN
from hypothesis import HealthCheck, given, settings

from esper.urza.app import create_app
from esper.urza.blobs import LocalBlobStore
from esper.urza.db import open_database


@pytest.fixture
def app(store_url, tmp_path):
    _, sessions = open_database(store_url)
    return create_app(sessions, LocalBlobStore(tmp_path / "blobs", max_bytes=4096), TOKEN)


def test_fuzzing_the_openapi_schema_never_gets_a_server_error(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    statuses: Counter[int] = Counter()
    data = b"known blob"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            if case.path_parameters and "sha256" in case.path_parameters and hash(str(case.query)) % 2:
                case.path_parameters["sha256"] = hashlib.sha256(data).hexdigest()
            for headers in (AUTH, {}):
                response = case.call(headers=headers)
                statuses[response.status_code] += 1
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"

        no_server_error()
    assert {200, 401, 404, 422} <= set(statuses), statuses
