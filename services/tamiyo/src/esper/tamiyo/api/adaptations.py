"""``/runs/{run_id}/adaptations``: force an adaptation, through the safety monitor unless overridden."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends

from esper.leyline import CommandAction
from esper.tamiyo.api.auth import ApiError
from esper.tamiyo.api.models import Adaptation, CommandIssued, Problem
from esper.tamiyo.service.control import ConflictError, ForcedAdaptation, RunControl, UnknownRunError


def adaptations_router(control: RunControl, guard: Callable[..., None]) -> APIRouter:
    router = APIRouter(prefix="/runs", tags=["adaptations"])

    @router.post(
        "/{run_id}/adaptations",
        status_code=202,
        summary="Force an adaptation (germinate, advance, cull, fossilize)",
        response_model=CommandIssued,
        dependencies=[Depends(guard)],
        responses={
            401: {"model": Problem, "description": "missing bearer token"},
            403: {"model": Problem, "description": "wrong bearer token"},
            404: {"model": Problem, "description": "unknown run"},
            409: {"model": Problem, "description": "rejected by the safety monitor (reason names the category)"},
            503: {"model": Problem, "description": "no API token configured, or Redis unavailable (Retry-After)"},
        },
    )
    async def adapt(run_id: str, body: Adaptation) -> CommandIssued:
        request = ForcedAdaptation(
            action=CommandAction(body.action),
            slot_id=body.slot_id,
            blueprint=body.blueprint,
            blueprint_config=body.blueprint_config,
            reason=body.reason,
            override=body.override,
        )
        try:
            outcome = await control.adapt(run_id, request)
        except UnknownRunError as exc:
            raise ApiError(404, str(exc)) from None
        except ConflictError as exc:
            raise ApiError(409, str(exc)) from None
        if not outcome.verdict.accepted or outcome.command_id is None:
            raise ApiError(409, outcome.verdict.reason)
        return CommandIssued(run_id=run_id, command_id=outcome.command_id)

    return router
