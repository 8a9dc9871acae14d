"""Building a run's policy: the one place that says which policies exist and how they are configured.

``esper train`` (Tolaria, in process) and the Tamiyo service both build a
run's policy with :func:`make_policy` and validate with :data:`DEFAULT_SAFETY`,
so a job decides the same on both paths.
"""

from __future__ import annotations

from esper.leyline import TrainingJob
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy
from esper.tamiyo.safety import SafetyConfig

#: The policies a job may name.
POLICIES = ("heuristic", "none")

#: The heuristic's candidates at vector and sequence slots (conv slots use its default conv candidates).
LAYOUT_CANDIDATES: dict[str, tuple[BlueprintChoice, ...]] = {
    "linear": (BlueprintChoice("mlp"), BlueprintChoice("lowrank")),
    "sequence": (BlueprintChoice("attention"), BlueprintChoice("mlp"), BlueprintChoice("lowrank")),
}

#: The safety monitor's limits on both paths (the Tamiyo service's flags default to these).
DEFAULT_SAFETY = SafetyConfig()


def heuristic_config(job: TrainingJob) -> HeuristicConfig:
    """The heuristic's defaults: wide residual conv seeds in every slot from the first epoch, within the budget.

    Growing early gives the seeds nearly the whole run to train, and on
    MNIST-1D validation that beat waiting for a plateau; a seed that does not
    earn its place is still culled by the gates. The candidates name
    blueprints only: their configuration and exact cost at each slot come from
    the run's :class:`~esper.leyline.ModelGraph`. ``benchmarks/growth.py``
    measures the result against static hosts of both sizes.

    Conv slots choose among the conv seeds above; vector (``linear``) slots an
    MLP or a low-rank adapter, sequence slots self-attention first (token mixing
    is what a per-token layer lacks), then the same; any other slot falls back
    to what the graph offers there (``benchmarks/hosts.py`` measures hosts
    nobody tuned these for).
    """
    return HeuristicConfig(
        plateau_patience=0,
        min_epoch_to_germinate=1,
        max_active_seeds=DEFAULT_SAFETY.max_active_seeds,
        candidates=(BlueprintChoice("conv_heavy"), BlueprintChoice("bottleneck"), BlueprintChoice("conv_light")),
        layout_candidates=LAYOUT_CANDIDATES,
        fallback_to_graph=True,
        param_budget=job.param_budget,
    )


def make_policy(name: str, job: TrainingJob) -> Policy:
    """A fresh policy called ``name`` for ``job``; ValueError naming the field for an unknown name."""
    if name == "none":
        return StaticPolicy()
    if name == "heuristic":
        return HeuristicTamiyo(heuristic_config(job))
    raise ValueError(f"field 'policy': unknown policy {name!r} (known: {', '.join(POLICIES)})")
