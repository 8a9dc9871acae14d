"""The heuristic Tamiyo's knobs: which blueprints it offers where, when it grows, when it culls."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from esper.leyline import GateThresholds
from esper.leyline.commands import BlueprintConfig


@dataclass(frozen=True, slots=True)
class BlueprintChoice:
    """A blueprint the policy may germinate, with its build configuration (empty: the graph's, or the default)."""

    name: str
    config: BlueprintConfig = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeuristicConfig:
    """Knobs of :class:`HeuristicTamiyo`. Epoch counts are whole epochs."""

    #: germinate once validation has not improved for this many epochs (the plateau Tolaria publishes)
    plateau_patience: int = 3
    #: no germination before this epoch (the host learns its easy part first)
    min_epoch_to_germinate: int = 0
    #: live (germinated .. probationary) seeds at once
    max_active_seeds: int = 1
    #: slots in the order they are offered seeds; empty = the order of the reports
    slot_order: tuple[str, ...] = ()
    #: blueprints to choose from, in tie-break order
    candidates: tuple[BlueprintChoice, ...] = (BlueprintChoice("conv_light"), BlueprintChoice("conv_heavy"))
    #: per-slot candidates overriding ``candidates``
    slot_candidates: Mapping[str, tuple[BlueprintChoice, ...]] = field(default_factory=dict)
    #: per-layout candidates (``linear``, ``sequence``, ``conv1d``, ``conv2d``; the graph says a slot's layout)
    layout_candidates: Mapping[str, tuple[BlueprintChoice, ...]] = field(default_factory=dict)
    #: where the graph offers none of a slot's candidates, choose among the graph's own options there
    fallback_to_graph: bool = False
    #: largest total parameter count a germination may lead to (None: unlimited; needs the graph or a cost model)
    param_budget: int | None = None
    #: contribution below -cull_harm counts as harm
    cull_harm: float = 0.01
    #: consecutive harmful measurements before a cull
    cull_patience: int = 2
    #: a seed is harmful only if it also does not lower validation loss (its ``contribution_loss`` is not > 0)
    cull_needs_loss_harm: bool = True
    #: epochs in TRAINING after which a seed that cannot pass G2 is culled
    max_training_epochs: int = 12
    #: epochs on probation after which a seed that cannot pass G5 is culled
    max_probation_epochs: int = 6
    #: epochs without germination after any cull
    cooldown_epochs: int = 3
    #: weight of the newest outcome in a blueprint's running score
    score_rate: float = 0.5
    #: one decision per slot at a boundary (asked again about the slots not acted on); False: one per boundary.
    #: The default job's policy, ``heuristic-per-slot``, sets it: with joint seeds it grew networks level with
    #: their architecture trained from scratch, and it is ahead on Simic's held-out variants (README)
    per_slot: bool = False
    #: thresholds the policy checks gates with (keep equal to Kasmina's)
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def __post_init__(self) -> None:
        for name in ("plateau_patience", "min_epoch_to_germinate", "cull_patience", "cooldown_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"field {name!r}: must be >= 0 (value {getattr(self, name)!r})")
        for name in ("max_active_seeds", "max_training_epochs", "max_probation_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"field {name!r}: must be >= 1 (value {getattr(self, name)!r})")
        if not 0.0 < self.score_rate <= 1.0:
            raise ValueError(f"field 'score_rate': must be in (0, 1] (value {self.score_rate!r})")
        if not math.isfinite(self.cull_harm) or self.cull_harm < 0:
            raise ValueError(f"field 'cull_harm': must be a finite number >= 0 (value {self.cull_harm!r})")
        if not self.candidates and not self.slot_candidates:
            raise ValueError("field 'candidates': at least one blueprint is needed (value ())")
