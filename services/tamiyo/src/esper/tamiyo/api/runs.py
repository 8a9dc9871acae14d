"""``/runs``: list, submit, status, pause/resume/stop, policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends
from fastapi.exceptions import RequestValidationError

from esper.leyline import RUN_ACTIONS, CodecError, CommandAction, TrainingJob, validate
from esper.tamiyo.api.auth import ApiError
from esper.tamiyo.api.models import (
    CommandIssued,
    ControlRequest,
    PolicyChoice,
    Problem,
    RunStatus,
    RunSummary,
    SubmitRun,
    Submitted,
)
from esper.tamiyo.api.views import status, summary
from esper.tamiyo.collector import RunState
from esper.tamiyo.service.control import ConflictError, RunControl, UnknownRunError
from esper.tamiyo.service.registry import PolicyRefused

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "unknown run"}}
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing bearer token"},
    403: {"model": Problem, "description": "wrong bearer token"},
    503: {"model": Problem, "description": "no API token configured, or Redis unavailable (Retry-After)"},
}


_READ_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing bearer token"},
    403: {"model": Problem, "description": "wrong bearer token"},
    503: {"model": Problem, "description": "no API token configured"},
}


def refused(name: str, exc: PolicyRefused) -> RequestValidationError:
    """A policy the run cannot be given, as a 422 naming the field ``policy`` (FastAPI's validation shape)."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", "policy"), "msg": str(exc), "input": name}])


def runs_router(control: RunControl, guard: Callable[..., None], read_guard: Callable[..., None]) -> APIRouter:
    """The runs resource over ``control``; ``guard`` admits mutations, ``read_guard`` reads."""
    router = APIRouter(prefix="/runs", tags=["runs"])
    mutating = [Depends(guard)]
    reading = [Depends(read_guard)]

    def find(run_id: str) -> RunState:
        try:
            return control.run(run_id)
        except UnknownRunError as exc:
            raise ApiError(404, str(exc)) from None

    @router.get("", summary="List runs", response_model=list[RunSummary], dependencies=reading, responses=_READ_AUTH)
    def list_runs() -> list[RunSummary]:
        return [summary(r) for r in control.collector.all()]

    @router.post(
        "",
        status_code=202,
        summary="Submit a training job",
        response_model=Submitted,
        dependencies=mutating,
        responses={**_AUTH, 409: {"model": Problem, "description": "run id taken"}},
    )
    async def submit(body: SubmitRun) -> Submitted:
        fields = body.model_dump(exclude={"run_id"})
        try:
            control.check_policy(fields["policy"])
        except PolicyRefused as exc:
            raise refused(fields["policy"], exc) from None
        try:
            job = validate(TrainingJob(**fields))
        except (CodecError, ValueError) as exc:
            raise ApiError(422, str(exc)) from None
        try:
            run_id = await control.submit(job, body.run_id)
        except ConflictError as exc:
            raise ApiError(409, str(exc)) from None
        return Submitted(run_id=run_id)

    @router.get(
        "/{run_id}",
        summary="A run's status",
        response_model=RunStatus,
        dependencies=reading,
        responses={**_READ_AUTH, **_NOT_FOUND},
    )
    def show(run_id: str) -> RunStatus:
        return status(find(run_id))

    def control_route(action: CommandAction) -> None:
        async def act(run_id: str, body: ControlRequest | None = Body(None)) -> CommandIssued:  # noqa: B008
            find(run_id)
            try:
                command_id = await control.control(run_id, action, body.reason if body else "")
            except ConflictError as exc:
                raise ApiError(409, str(exc)) from None
            return CommandIssued(run_id=run_id, command_id=command_id)

        router.add_api_route(
            f"/{{run_id}}/{action.value}",
            act,
            methods=["POST"],
            status_code=202,
            summary=f"{action.value.capitalize()} a run",
            response_model=CommandIssued,
            dependencies=mutating,
            responses={**_AUTH, **_NOT_FOUND, 409: {"model": Problem, "description": "run finished or stopped"}},
            name=f"{action.value}_run",
        )

    for action in sorted(RUN_ACTIONS):
        control_route(action)

    @router.put(
        "/{run_id}/policy",
        summary="Switch a run's policy",
        description="To a policy of ``GET /policies``; 422 (naming the policy) for one that is unknown, cannot "
        "load here (a learned policy without the gnn extra) or whose file is unreadable: the run keeps its policy.",
        response_model=RunSummary,
        dependencies=mutating,
        responses={**_AUTH, **_NOT_FOUND},
    )
    async def set_policy(run_id: str, body: PolicyChoice) -> RunSummary:
        run = find(run_id)
        try:
            await control.set_policy(run_id, body.policy)
        except PolicyRefused as exc:
            raise refused(body.policy, exc) from None
        return summary(run)

    return router
