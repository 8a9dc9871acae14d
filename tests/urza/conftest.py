"""Urza fixtures: the store over SQLite and over PostgreSQL (``store_url`` is parametrized over both).

Without a PostgreSQL (none configured, none on 127.0.0.1:5432, no binaries to
start one) the PostgreSQL half is skipped with the reason on a developer
machine and FAILS under ``CI``, like a missing Redis.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))

from postgres_server import DEFAULT_URL, PrivatePostgres, answers

from esper.urza.app import create_app
from esper.urza.blobs import LocalBlobStore
from esper.urza.db import open_database

TOKEN = "urza-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _no_postgres(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a PostgreSQL for Urza's tests: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL half skipped: {reason}")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL of a PostgreSQL the session may create schemas in."""
    external = os.environ.get("ESPER_TEST_POSTGRES_URL")
    if external:
        why = answers(external)
        if why is not None:
            pytest.fail(f"ESPER_TEST_POSTGRES_URL={external!r} does not answer: {why}", pytrace=False)
        yield external
        return
    if answers(DEFAULT_URL) is None:
        yield DEFAULT_URL
        return
    try:
        server = PrivatePostgres(tmp_path_factory.mktemp("postgres") / "data").start()
    except Exception as exc:
        _no_postgres(f"nothing answers at {DEFAULT_URL} and no private postgres could start ({exc})")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A SQLAlchemy URL whose connections work in a fresh schema, dropped after the test."""
    schema = f"urza_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of one test: SQLite in a temp file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'urza.db'}"
    return str(request.getfixturevalue("postgres_schema_url"))


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", max_bytes=1 << 20)


@pytest.fixture
def client(store_url: str, blobs: LocalBlobStore) -> Iterator[TestClient]:
    """Urza's app over ``store_url`` with the built-in catalogue registered; writes need ``AUTH``."""
    engine, sessions = open_database(store_url)
    with TestClient(create_app(sessions, blobs, TOKEN)) as c:
        yield c
    engine.dispose()
