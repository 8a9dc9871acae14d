"""How the Tamiyo service builds a run's policy: the same policy ``esper train`` runs in process.

The cost model is exact: it wraps the job's host with Kasmina and probes it once,
so every slot knows its feature shape, then asks each blueprint for its
parameter count there. Models are cached per (task, data, host width), since
many runs share one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from esper.kasmina import wrap
from esper.leyline import TrainingJob
from esper.tamiyo.heuristic import CostModel, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy
from esper.tolaria.runs import KASMINA, POLICIES, RunSpec, cost_model, heuristic_config
from esper.tolaria.tasks import load_task

__all__ = ["POLICIES", "TaskWiring"]


class TaskWiring:
    """:class:`~esper.tamiyo.collector.RunWiring` for the tasks Tolaria trains (``esper.tolaria.tasks``)."""

    policies = POLICIES

    def __init__(self) -> None:
        self._costs: dict[tuple[str, str | None, int | None], CostModel] = {}
        self._lock = threading.Lock()

    def cost_model(self, job: TrainingJob) -> CostModel | None:
        """Exact parameters a blueprint adds at a slot of ``job``'s model (None where it does not fit)."""
        key = (job.task, job.data_dir, job.host_channels)
        with self._lock:
            cached = self._costs.get(key)
            if cached is None:
                cached = self._costs[key] = _probe_cost_model(job)
        return cached

    def policy(self, name: str, job: TrainingJob, cost_model: CostModel | None) -> Policy:
        """A fresh policy ``name`` configured exactly as ``esper train`` configures it for ``job``."""
        if name == "none":
            return StaticPolicy()
        if name == "heuristic":
            # Tolaria's run wiring, which `esper train` shares, is the one source of the heuristic's defaults.
            spec = RunSpec(policy="heuristic", param_budget=job.param_budget)
            return HeuristicTamiyo(heuristic_config(spec), cost_model=cost_model)
        raise ValueError(f"field 'policy': unknown policy {name!r} (known: {', '.join(POLICIES)})")


def _probe_cost_model(job: TrainingJob) -> CostModel:
    task = load_task(job.task, data_dir=job.data_dir, max_train_samples=2, host_channels=job.host_channels)
    model = wrap(task.build_host(), task.slots, config=KASMINA)
    model.probe(task.train.x[:2])
    priced: Callable[..., int | None] = cost_model(model)
    return priced
