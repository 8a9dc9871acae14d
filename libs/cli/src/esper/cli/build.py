"""The run wiring ``esper train`` uses, which lives in the trainer library (:mod:`esper.tolaria.runs`).

Re-exported here so ``esper.cli.build`` keeps working for the CLI, benchmarks
and scripts; the Tolaria service builds its runs from the same module.
"""

from __future__ import annotations

from esper.tolaria.runs import (
    KASMINA,
    POLICIES,
    RunFolder,
    RunSpec,
    build_trainer,
    cost_model,
    heuristic_config,
    make_policy,
    run,
    stage_summary,
)

__all__ = [
    "KASMINA",
    "POLICIES",
    "RunFolder",
    "RunSpec",
    "build_trainer",
    "cost_model",
    "heuristic_config",
    "make_policy",
    "run",
    "stage_summary",
]
