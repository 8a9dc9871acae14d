"""Urza's metadata in SQL: blueprints and kernels (SQLAlchemy 2 models), engines and migrations.

SQLite (a file, the embedded default) and PostgreSQL (a cluster) run the same
models and the same Alembic migrations; :func:`open_database` migrates to the
latest revision before anything reads, so a fresh or an old database is
brought to the schema the code expects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class BlueprintRow(Base):
    """One version of a blueprint. ``config_schema`` is a JSON Schema of its config."""

    __tablename__ = "blueprints"
    __table_args__ = (UniqueConstraint("blueprint_id", "version", name="uq_blueprint_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    blueprint_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(64), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    layer_kinds: Mapped[list[str]] = mapped_column(JSON)
    default_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KernelRow(Base):
    """One kernel: a blueprint version compiled for one config, shape, layout, dtype and target."""

    __tablename__ = "kernels"

    kernel_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    blueprint_id: Mapped[str] = mapped_column(String(64), index=True)
    blueprint_version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    #: the shape as ``16x40``, indexed for search
    shape_key: Mapped[str] = mapped_column(String(128), index=True)
    layout: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dtype: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    backward_latency_us: Mapped[float | None] = mapped_column(Float, nullable=True)
    params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_abs_error: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_grad_error: Mapped[float | None] = mapped_column(Float, nullable=True)
    artifact_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` with the packaged migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean PostgreSQL through psycopg 3 (the driver Urza ships with)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys on and a busy timeout, so threads share it."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # UTF-8 on the wire whatever the server's encoding: under SQL_ASCII psycopg would hand
    # SQLAlchemy bytes (the server version among them) and Urza could not start.
    return create_engine(url, pool_pre_ping=True, connect_args={"client_encoding": "utf8"})


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the latest migration."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def open_database(url: str) -> tuple[Engine, sessionmaker[Any]]:
    """Engine and session factory for ``url``, migrated to the latest schema."""
    engine = make_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
