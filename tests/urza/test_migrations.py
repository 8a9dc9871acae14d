"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from esper.urza.db import Base, make_engine, migrate, open_database


def test_migrating_a_fresh_database_yields_the_models_schema(store_url):
    engine, _ = open_database(store_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrating_again_is_a_no_op_and_keeps_rows(store_url):
    engine, sessions = open_database(store_url)
    from esper.urza.catalogue import builtin_catalogue, register_builtins

    with sessions() as session:
        assert register_builtins(session) == len(builtin_catalogue())
    migrate(make_engine(store_url))
    with sessions() as session:
        assert register_builtins(session) == 0
    assert {"blueprints", "kernels", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_a_plain_postgresql_url_means_psycopg_3():
    from esper.urza.db import normalize_url

    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_urza_starts_on_a_sql_ascii_postgresql_database(postgres_url):
    import uuid

    import psycopg

    from esper.urza.catalogue import builtin_catalogue, register_builtins

    name = f"urza_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0")
    try:
        engine, sessions = open_database(postgres_url.rsplit("/", 1)[0] + f"/{name}")
        with sessions() as session:
            assert register_builtins(session) == len(builtin_catalogue())
        engine.dispose()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")
