"""``/blueprints``: create, list (paginated, by family), get by id (latest version) and by version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from esper.urza.api.auth import AUTH_RESPONSES, ApiError
from esper.urza.api.models import NO_NUL, BlueprintIn, BlueprintName, BlueprintOut, BlueprintPage, Reason
from esper.urza.catalogue import config_schema
from esper.urza.db import BlueprintRow

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Reason, "description": "unknown blueprint"}}


def to_out(row: BlueprintRow) -> BlueprintOut:
    return BlueprintOut.model_validate(row, from_attributes=True)


def latest(session: Session, blueprint_id: str) -> BlueprintRow | None:
    """The highest version of ``blueprint_id``."""
    return session.scalars(
        select(BlueprintRow).where(BlueprintRow.blueprint_id == blueprint_id).order_by(BlueprintRow.version.desc())
    ).first()


def blueprint_router(sessions: sessionmaker[Session], write: Callable[..., None]) -> APIRouter:
    router = APIRouter(prefix="/blueprints", tags=["blueprints"])

    @router.post(
        "",
        status_code=201,
        response_model=BlueprintOut,
        dependencies=[Depends(write)],
        responses={**AUTH_RESPONSES, 409: {"model": Reason, "description": "this version exists"}},
        summary="Register a blueprint, or a new version of one",
    )
    def create(body: BlueprintIn) -> BlueprintOut:
        with sessions() as session:
            version = body.version
            if version is None:
                current = latest(session, body.blueprint_id)
                version = 1 if current is None else current.version + 1
            row = BlueprintRow(
                blueprint_id=body.blueprint_id,
                version=version,
                family=body.family,
                description=body.description,
                layer_kinds=list(dict.fromkeys(body.layer_kinds)),
                default_config=dict(body.default_config),
                config_schema=config_schema(body.default_config),
                builtin=False,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                raise ApiError(409, f"blueprint {body.blueprint_id!r} version {version} exists") from None
            return to_out(row)

    @router.get("", response_model=BlueprintPage, summary="List blueprints (every version), optionally of one family")
    def list_(
        family: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1 << 31)] = 0,
    ) -> BlueprintPage:
        where = [] if family is None else [BlueprintRow.family == family]
        with sessions() as session:
            total = session.scalar(select(func.count()).select_from(BlueprintRow).where(*where)) or 0
            rows = session.scalars(
                select(BlueprintRow)
                .where(*where)
                .order_by(BlueprintRow.blueprint_id, BlueprintRow.version)
                .limit(limit)
                .offset(offset)
            ).all()
            return BlueprintPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)

    @router.get("/{blueprint_id}", response_model=BlueprintOut, responses=NOT_FOUND, summary="Latest version")
    def get(blueprint_id: Annotated[BlueprintName, Path()]) -> BlueprintOut:
        with sessions() as session:
            row = latest(session, blueprint_id)
            if row is None:
                raise ApiError(404, f"unknown blueprint {blueprint_id!r}")
            return to_out(row)

    @router.get(
        "/{blueprint_id}/versions/{version}", response_model=BlueprintOut, responses=NOT_FOUND, summary="One version"
    )
    def get_version(
        blueprint_id: Annotated[BlueprintName, Path()], version: Annotated[int, Path(ge=1, le=1_000_000)]
    ) -> BlueprintOut:
        with sessions() as session:
            row = session.scalars(
                select(BlueprintRow).where(BlueprintRow.blueprint_id == blueprint_id, BlueprintRow.version == version)
            ).first()
            if row is None:
                raise ApiError(404, f"unknown blueprint {blueprint_id!r} version {version}")
            return to_out(row)

    return router
