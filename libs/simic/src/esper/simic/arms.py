"""Growth plans: fixed alternatives to the heuristic's choices, for measuring headroom and for demonstrations.

An :class:`Arm` is the heuristic's lifecycle rules (advance when a gate passes,
fossilize, cull what harms) with the *growth* choices fixed: which blueprint
goes into which slot (a plan string, one letter per slot in the graph's slot
order, see :data:`LETTERS`; ``-`` leaves a slot empty), the epoch growth starts,
whether a boundary seeds every planned slot at once (``per_slot``) or one slot
per boundary (the heuristic's default), and whether culling is on. A plan slot
whose blueprint does not fit the remaining parameter budget stays empty.

``Arm("heuristic")`` with no plan is the default heuristic itself
(:func:`esper.tamiyo.policies.heuristic_config`); ``Arm("static", plan="---")``
never grows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from esper.leyline import TrainingJob
from esper.tamiyo.heuristic import BlueprintChoice, HeuristicTamiyo
from esper.tamiyo.policies import heuristic_config

#: Plan letters: the blueprint each stands for (``-``: nothing).
LETTERS: dict[str, str | None] = {
    "H": "conv_heavy",
    "B": "bottleneck",
    "L": "conv_light",
    "D": "depthwise",
    "S": "se_attention",
    "N": "norm",
    "-": None,
}
_NOTHING = "(none)"  # a blueprint no graph offers: the slot is never seeded


@dataclass(frozen=True, slots=True)
class Arm:
    """One fixed growth behaviour (see the module docstring); ``plan=None``: the heuristic's own choices."""

    name: str
    plan: str | None = None
    start: int = 1
    per_slot: bool = False
    cull: bool = True

    def __post_init__(self) -> None:
        if self.plan is not None:
            bad = [c for c in self.plan if c not in LETTERS]
            if bad or not self.plan:
                raise ValueError(f"field 'plan': letters must be from {''.join(LETTERS)} (value {self.plan!r})")
        if self.start < 1:
            raise ValueError(f"field 'start': must be >= 1 (value {self.start!r})")

    def policy(self, budget: int | None, slots: tuple[str, ...] = ("s1", "s2", "s3")) -> HeuristicTamiyo:
        """The heuristic configured to follow this arm on a host whose slots are ``slots`` (graph order)."""
        config = replace(
            heuristic_config(TrainingJob(param_budget=budget)),
            min_epoch_to_germinate=self.start,
            per_slot=self.per_slot,
        )
        if not self.cull:
            config = replace(config, cull_patience=0, max_training_epochs=10**6, max_probation_epochs=10**6)
        if self.plan is not None:
            if len(self.plan) != len(slots):
                raise ValueError(f"field 'plan': {self.plan!r} has {len(self.plan)} letters for {len(slots)} slots")
            chosen = {slot: BlueprintChoice(LETTERS[c] or _NOTHING) for slot, c in zip(slots, self.plan, strict=True)}
            config = replace(
                config,
                slot_candidates={s: (choice,) for s, choice in chosen.items()},
                slot_order=tuple(slots),
                fallback_to_graph=False,
            )
        return HeuristicTamiyo(config)


def default_arms() -> list[Arm]:
    """The alternatives ``benchmarks/policy_headroom.py`` measures by default."""
    arms = [
        Arm("heuristic"),
        Arm("heuristic-per-slot", per_slot=True),
        Arm("heuristic-start3", start=3),
        Arm("heuristic-nocull", cull=False),
        Arm("static", plan="---"),
    ]
    for plan in ("HBB", "BHB", "BBH", "HHB", "HBH", "BHH", "H--", "-H-", "--H", "HH-", "-HH", "H-H"):
        arms.append(Arm(f"plan-{plan}", plan=plan))
    for plan in ("LLL", "BBB", "DDD", "SSS", "NNN", "HLL", "LHL", "LLH"):
        arms.append(Arm(f"plan-{plan}", plan=plan))
    arms += [Arm("plan-HBB-per-slot", plan="HBB", per_slot=True), Arm("plan-BBH-per-slot", plan="BBH", per_slot=True)]
    return arms


def arm_named(name: str, arms: list[Arm] | None = None) -> Arm:
    """The arm called ``name`` among ``arms`` (default :func:`default_arms`), or a plan arm ``plan-XYZ``."""
    for arm in arms or default_arms():
        if arm.name == name:
            return arm
    if name.startswith("plan-"):
        plan = name.removeprefix("plan-")
        if plan.endswith("-per-slot"):  # every planned slot seeded at the same boundary
            return Arm(name, plan=plan.removesuffix("-per-slot"), per_slot=True)
        return Arm(name, plan=plan)
    raise ValueError(f"field 'arm': unknown arm {name!r}")
