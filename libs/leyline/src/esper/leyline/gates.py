"""Quality gates G0-G5: the named checks that guard each forward lifecycle step.

A gate reads a :class:`GateInputs` (numbers Kasmina and Tolaria measure) and a
:class:`GateThresholds` (configuration), and answers with a :class:`GateResult`
carrying the reason either way. Culling is never gated: harm is reason enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import msgspec

from esper.leyline.stages import SeedStage

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]


class GateThresholds(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configurable thresholds for every gate. Accuracies are fractions in [0, 1].

    Build from untrusted configuration with :meth:`from_config`, which names the
    field and value of anything wrong.
    """

    #: G2: epochs of training (isolated or joint, ``KasminaConfig.isolate_seeds``) before blending.
    min_training_epochs: NonNegInt = 3
    #: G2: the drop in the seed's own training loss over its TRAINING stage must exceed this.
    min_training_improvement: float = 0.0
    #: G2: host gradients seen through the seed path that are tolerated.
    max_isolation_violations: NonNegInt = 0
    #: G3: alpha within this of 1.0 counts as fully blended.
    alpha_tolerance: NonNegFloat = 1e-3
    #: G4: epochs at full alpha before probation.
    min_shadowing_epochs: NonNegInt = 1
    #: G4: largest drop in validation accuracy the seed may cause.
    max_shadowing_harm: NonNegFloat = 0.005
    #: G5: epochs on probation before fossilizing.
    min_probation_epochs: NonNegInt = 1
    #: G5: counterfactual validation-accuracy gain the seed must exceed.
    min_fossilize_contribution: float = 0.0
    #: G5: a seed gradient norm above this is unhealthy.
    max_seed_grad_norm: Annotated[float, msgspec.Meta(gt=0.0)] = 1e4

    @classmethod
    def from_config(cls, config: dict[str, object]) -> GateThresholds:
        try:
            return msgspec.convert(config, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"gate thresholds: {exc} (config {config!r})") from None


class Gate(Enum):
    """The six gates, each guarding the step into ``target``."""

    G0_GERMINATE = ("G0", SeedStage.GERMINATED)
    G1_TRAIN = ("G1", SeedStage.TRAINING)
    G2_BLEND = ("G2", SeedStage.BLENDING)
    G3_SHADOW = ("G3", SeedStage.SHADOWING)
    G4_PROBATION = ("G4", SeedStage.PROBATIONARY)
    G5_FOSSILIZE = ("G5", SeedStage.FOSSILIZED)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def target(self) -> SeedStage:
        return self.value[1]

    @classmethod
    def for_target(cls, target: SeedStage) -> Gate | None:
        """The gate guarding the step into ``target``; None for cull/embargo/reset steps."""
        for gate in cls:
            if gate.target is SeedStage(target):
                return gate
        return None


@dataclass(slots=True)
class GateInputs:
    """What a gate reads about one slot. Fields a gate does not need may stay None."""

    stage: SeedStage
    epochs_in_stage: int = 0
    slot_known: bool = True
    blueprint_known: bool = True
    seed_built: bool = False
    improvement: float | None = None
    isolation_violations: int = 0
    alpha: float = 0.0
    contribution: float | None = None
    seed_grad_norm: float | None = None


@dataclass(slots=True, frozen=True)
class GateResult:
    gate: Gate
    passed: bool
    reason: str


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def evaluate(gate: Gate, inputs: GateInputs, thresholds: GateThresholds) -> GateResult:
    """Evaluate ``gate`` on ``inputs``. Never raises on odd numbers: NaN fails the gate."""
    t, x = thresholds, inputs

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(gate, passed, f"{gate.code}: {reason}")

    if gate is Gate.G0_GERMINATE:
        if not x.slot_known:
            return result(False, "unknown slot")
        if not x.blueprint_known:
            return result(False, "unknown blueprint")
        if x.stage is not SeedStage.DORMANT:
            return result(False, f"slot is {x.stage.name}, not DORMANT")
        return result(True, "slot and blueprint valid")
    if gate is Gate.G1_TRAIN:
        if not x.seed_built:
            return result(False, "seed module not built")
        return result(True, "seed germinated")
    if gate is Gate.G2_BLEND:
        if x.epochs_in_stage < t.min_training_epochs:
            return result(False, f"trained {x.epochs_in_stage} < {t.min_training_epochs} epochs")
        if x.isolation_violations > t.max_isolation_violations:
            return result(False, f"isolation violated {x.isolation_violations} times")
        if not _finite(x.improvement):
            return result(False, f"seed improvement {x.improvement} is not a finite number")
        assert x.improvement is not None
        if x.improvement <= t.min_training_improvement:
            return result(False, f"seed loss improvement {x.improvement:.4g} <= {t.min_training_improvement:.4g}")
        return result(True, f"training improved loss by {x.improvement:.4g}; no isolation violation")
    if gate is Gate.G3_SHADOW:
        if not math.isfinite(x.alpha) or x.alpha < 1.0 - t.alpha_tolerance:
            return result(False, f"alpha {x.alpha:.3f} has not reached 1.0")
        return result(True, "blending finished at alpha 1.0")
    if gate is Gate.G4_PROBATION:
        if x.epochs_in_stage < t.min_shadowing_epochs:
            return result(False, f"shadowed {x.epochs_in_stage} < {t.min_shadowing_epochs} epochs")
        if not _finite(x.contribution):
            return result(False, f"contribution {x.contribution} is not a finite number")
        assert x.contribution is not None
        if x.contribution < -t.max_shadowing_harm:
            return result(False, f"seed costs {-x.contribution:.4f} validation accuracy")
        return result(True, f"shadowing did no harm (contribution {x.contribution:+.4f})")
    # G5
    if x.epochs_in_stage < t.min_probation_epochs:
        return result(False, f"on probation {x.epochs_in_stage} < {t.min_probation_epochs} epochs")
    if not _finite(x.contribution):
        return result(False, f"contribution {x.contribution} is not a finite number")
    assert x.contribution is not None
    if x.contribution <= t.min_fossilize_contribution:
        return result(False, f"contribution {x.contribution:+.4f} <= {t.min_fossilize_contribution:+.4f}")
    if not _finite(x.seed_grad_norm) or (x.seed_grad_norm or 0.0) > t.max_seed_grad_norm:
        return result(False, f"seed gradient norm {x.seed_grad_norm} is unhealthy")
    return result(True, f"contribution {x.contribution:+.4f} with healthy gradients")
