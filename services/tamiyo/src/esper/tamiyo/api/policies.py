"""``/policies``: the policies runs may be given (named ones and the learned files of the policy directory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends

from esper.tamiyo.api.models import PolicyView, Problem
from esper.tamiyo.service.control import RunControl

_READ_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing bearer token"},
    403: {"model": Problem, "description": "wrong bearer token"},
    503: {"model": Problem, "description": "no API token configured"},
}


def policies_router(control: RunControl, read_guard: Callable[..., None]) -> APIRouter:
    """The policies resource over ``control``'s registry; ``read_guard`` admits reads."""
    router = APIRouter(prefix="/policies", tags=["policies"])

    @router.get(
        "",
        summary="List the policies runs may be given",
        description="Learned policies are read from the policy directory (ESPER_POLICY_DIR) at each request; "
        "``available`` is false where this Tamiyo cannot load one (``reason`` says why, e.g. the missing gnn extra).",
        response_model=list[PolicyView],
        dependencies=[Depends(read_guard)],
        responses=_READ_AUTH,
    )
    def list_policies() -> list[PolicyView]:
        return [PolicyView(**asdict(entry)) for entry in control.registry.entries()]

    return router
