"""Building a run's policy: the one place that says which policies exist and how they are configured.

``esper train`` (Tolaria, in process) and the Tamiyo service both build a
run's policy with :func:`make_policy` and validate with :data:`DEFAULT_SAFETY`,
so a job decides the same on both paths.

Besides the named policies a job may name a learned policy file,
``PATH.pt`` (``esper simic train`` writes one; ``PATH.pt?sample`` draws its
actions with a generator seeded by the job's seed instead of taking the most
likely one), or a learned policy that ships with this package by its name
(:data:`SHIPPED_POLICIES`: ``learned``, also ``learned?sample``). Loading one
needs the ``gnn`` extra (torch, torch_geometric), imported only then: this
module stays torch-free.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from esper.leyline import TrainingJob
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicConfig, HeuristicTamiyo
from esper.tamiyo.policy import Policy, StaticPolicy
from esper.tamiyo.safety import SafetyConfig

#: The policies a job may name (or a learned policy file, see :func:`is_policy_file`).
POLICIES = ("heuristic", "heuristic-per-slot", "none")
#: How a learned policy file's name ends.
POLICY_FILE_SUFFIX = ".pt"
#: Ways to decode a learned policy file's actions, after ``?``: greedy (none) or ``sample``.
POLICY_FILE_MODES = ("", "sample")
#: Learned policies that ship with the package, by name (the README says how each was trained and measured).
SHIPPED_POLICIES: dict[str, Path] = {"learned": Path(__file__).parent / "gnn" / "policies" / "learned.pt"}
#: The install that brings a learned policy's dependencies.
GNN_EXTRA = "esper-tamiyo[gnn]"

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


class PolicyUnavailable(ValueError):
    """A learned policy this process cannot load: its ``gnn`` extra (torch, torch_geometric) is not installed."""


def is_policy_file(name: str) -> bool:
    """Whether ``name`` names a learned policy file (``PATH.pt`` or ``PATH.pt?MODE``) rather than a named policy."""
    return name.partition("?")[0].endswith(POLICY_FILE_SUFFIX)


def _known() -> str:
    return f"{', '.join((*POLICIES, *SHIPPED_POLICIES))}, or a policy file PATH{POLICY_FILE_SUFFIX}"


def shipped_policy_file(name: str) -> str | None:
    """The policy file ``name`` stands for when it names a shipped learned policy (``learned``,
    ``learned?sample``), else None."""
    base, sep, mode = name.partition("?")
    path = SHIPPED_POLICIES.get(base)
    return None if path is None else f"{path}{sep}{mode}"


def is_known_policy(name: str) -> bool:
    """Whether ``name`` is a named policy, a shipped learned one, or looks like a policy file (not checked)."""
    return name in POLICIES or shipped_policy_file(name) is not None or is_policy_file(name)


def check_policy(name: str) -> None:
    """ValueError naming the field unless ``name`` is a named policy or an existing policy file
    with a known mode (cheap: nothing is loaded)."""
    if name in POLICIES:
        return
    name = shipped_policy_file(name) or name
    if not is_policy_file(name):
        raise ValueError(f"field 'policy': unknown policy {name!r} (known: {_known()})")
    path, _, mode = name.partition("?")
    if mode not in POLICY_FILE_MODES:
        raise ValueError(f"field 'policy': unknown mode {mode!r} in {name!r} (known: greedy PATH.pt, PATH.pt?sample)")
    if not Path(path).is_file():
        raise ValueError(f"field 'policy': policy file {path!r} does not exist")


def load_policy_file(name: str, job: TrainingJob) -> Policy:
    """The learned policy in file ``name`` (``PATH.pt`` or ``PATH.pt?sample``), deciding for ``job``'s
    epochs and parameter budget. ValueError naming the field for a missing or unreadable file;
    :class:`PolicyUnavailable` where torch or torch_geometric cannot be imported."""
    check_policy(name)
    path, _, mode = name.partition("?")
    try:
        from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo
    except ImportError as exc:
        raise PolicyUnavailable(
            f"field 'policy': the learned policy {name!r} needs the gnn extra (pip install '{GNN_EXTRA}'), "
            f"which this process lacks ({exc})"
        ) from None
    config = GNNPolicyConfig(
        epochs_total=job.epochs, param_budget=job.param_budget, sample=mode == "sample", sample_seed=job.seed
    )
    return GNNTamiyo.load(path, config)


def make_policy(name: str, job: TrainingJob) -> Policy:
    """A fresh policy called ``name`` for ``job`` (a named policy or a learned policy file, see the module
    docstring); ValueError naming the field for an unknown name or a missing or unreadable file."""
    if name == "none":
        return StaticPolicy()
    if name == "heuristic":
        return HeuristicTamiyo(heuristic_config(job))
    if name == "heuristic-per-slot":  # the same rules, one decision per slot at a boundary
        return HeuristicTamiyo(replace(heuristic_config(job), per_slot=True))
    shipped = shipped_policy_file(name)
    if shipped is not None:
        return load_policy_file(shipped, job)
    if is_policy_file(name):
        return load_policy_file(name, job)
    raise ValueError(f"field 'policy': unknown policy {name!r} (known: {_known()})")
