"""SeedSlot: the place at one host layer where a seed can grow.

A slot attaches to a host submodule with a forward hook, and only while it has
work to do: a DORMANT (or GERMINATED, CULLED, ...) slot has no hook at all, so
the host runs exactly as it would bare, at the same speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.layout import infer_layer_kind, layout_rank, normalize_layout
from esper.leyline import (
    BLENDED_STAGES,
    HOOKED_STAGES,
    ISOLATED_STAGES,
    SEEDED_STAGES,
    SeedStage,
    SeedStateReport,
)

_OFF = "off"


@dataclass(slots=True)
class SlotMetrics:
    """What Tolaria last measured about a slot's seed; the gates read these."""

    improvement: float | None = None
    contribution: float | None = None
    contribution_loss: float | None = None
    seed_grad_norm: float | None = None
    host_grad_norm: float | None = None
    #: host gradients seen through the seed path, summed over the seed's life
    isolation_violations: int = 0

    def as_floats(self) -> dict[str, float]:
        """The measured values as a ``{name: float}`` map (unmeasured ones left out), for events."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


class SeedSlot(nn.Module):
    """One seed slot at the host submodule ``module_name``.

    Forward at its layer, for host features ``h`` of shape (N, *feature_shape):

    - DORMANT, GERMINATED, CULLED, EMBARGOED, RESETTING: ``h`` unchanged;
    - TRAINING: ``h + (s - s.detach())`` with ``s = seed(h.detach())``: the value is
      ``h``, the seed learns from the downstream loss, the host gets nothing via the seed;
      a joint slot (``isolate=False``) gives ``seed(h)`` instead: seed and host learn together;
    - BLENDING, SHADOWING, PROBATIONARY: ``alpha * seed(h) + (1 - alpha) * h``;
    - FOSSILIZED: ``seed(h)``.
    """

    def __init__(
        self,
        slot_id: str,
        module_name: str,
        target: nn.Module,
        in_sequence_model: bool = False,
        layout: str | None = None,
        isolate: bool = False,
    ) -> None:
        super().__init__()
        self.slot_id = slot_id
        #: True: a TRAINING seed reads detached host features and stays out of the forward value; False (joint):
        #: it is in the forward value and the host learns through it (KasminaConfig.isolate_seeds)
        self.isolate = isolate
        self.module_name = module_name
        self.stage = SeedStage.DORMANT
        self.seed: nn.Module | None = None
        self.blueprint: str | None = None
        self.blueprint_config: dict[str, int | float | str | bool] = {}
        self.seed_id: str | None = None
        self.alpha = 0.0
        self.epochs_in_stage = 0
        self.embargo_left = 0
        self.feature_shape: tuple[int, ...] | None = None
        self.layer_kind: str | None = None
        self.in_sequence_model = in_sequence_model
        #: the layout the user declared for this slot (None: inferred when probed)
        self.declared_layout = normalize_layout(layout, f"layouts.{slot_id}") if layout is not None else None
        self.metrics = SlotMetrics()
        # Where the alpha ramp started and how many epochs it has run (set_alpha re-bases it).
        self.ramp_from = 0.0
        self.ramp_epochs = 0
        # A zero-size buffer that follows .to(device/dtype): new seeds are built to match it.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        # The host submodule is kept out of _modules so it is neither registered twice nor in state_dict.
        self.__dict__["_target"] = target
        self._hook_id: int | None = None
        self._override: tuple[str, float] | None = None
        self._probing = False

    # ----------------------------------------------------------------- forward
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Map host features (N, *feature_shape) to the slot's output of the same shape."""
        if self._override is not None:
            return self._forward_override(h)
        stage = self.stage
        if stage is SeedStage.TRAINING:
            s = self.seed(self._seed_input(h))  # type: ignore[misc]
            return h + (s - s.detach()) if self.isolate else s
        if stage in BLENDED_STAGES:
            s = self.seed(h)  # type: ignore[misc]
            if self.alpha == 1.0:
                return s
            return self.alpha * s + (1.0 - self.alpha) * h
        if stage is SeedStage.FOSSILIZED:
            return self.seed(h)  # type: ignore[misc]
        return h

    def _seed_input(self, h: torch.Tensor) -> torch.Tensor:
        """What a TRAINING seed reads: a detached copy of the host features (the features themselves when joint)."""
        return h.detach() if self.isolate else h

    @property
    def in_forward(self) -> bool:
        """Whether the seed is in the forward value: a joint one from TRAINING on, an isolated one from BLENDING on
        (the host learns with it from then; Kasmina's host marks and Tolaria's host wait count from here)."""
        stage = self.stage
        if stage is SeedStage.TRAINING:
            return not self.isolate
        return stage in BLENDED_STAGES or stage is SeedStage.FOSSILIZED

    @property
    def isolated(self) -> bool:
        """Whether the seed now learns apart from the host (an isolating slot in GERMINATED or TRAINING)."""
        return self.isolate and self.stage in ISOLATED_STAGES

    def _forward_override(self, h: torch.Tensor) -> torch.Tensor:
        assert self._override is not None
        mode, alpha = self._override
        if mode == _OFF or self.seed is None:
            return h
        s = self.seed(self._seed_input(h) if self.isolated else h)
        if alpha == 1.0:
            return s
        return alpha * s + (1.0 - alpha) * h

    def _hook(self, module: nn.Module, args: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"slot {self.slot_id!r}: module {self.module_name!r} returned {type(output).__name__}, "
                "a slot needs a module whose output is one tensor"
            )
        if self._probing:
            self._learn_shape(output)
        result: torch.Tensor = self(output)
        return result

    def _learn_shape(self, output: torch.Tensor) -> None:
        if output.dim() < 2:
            raise ValueError(
                f"slot {self.slot_id!r}: module {self.module_name!r} output has shape {tuple(output.shape)}; "
                "a slot needs (N, *features)"
            )
        self.feature_shape = tuple(int(s) for s in output.shape[1:])
        if self.declared_layout is None:
            self.layer_kind = infer_layer_kind(self.target, self.feature_shape, self.in_sequence_model)
            return
        if layout_rank(self.declared_layout) != len(self.feature_shape):
            raise ValueError(
                f"field 'layouts.{self.slot_id}': layout {self.declared_layout!r} needs rank-"
                f"{layout_rank(self.declared_layout)} features, module {self.module_name!r} gives {self.feature_shape}"
            )
        self.layer_kind = self.declared_layout

    # ----------------------------------------------------------------- hook management
    @property
    def target(self) -> nn.Module:
        """The host submodule this slot acts at."""
        target: nn.Module = self.__dict__["_target"]
        return target

    def sync_hook(self) -> None:
        """Register the forward hook exactly when the slot has work to do, remove it otherwise."""
        needed = self.stage in HOOKED_STAGES or self._override is not None or self._probing
        if needed and self._hook_id is None:
            self._hook_id = self.target.register_forward_hook(self._hook).id
        elif not needed and self._hook_id is not None:
            self.remove_hook()

    def remove_hook(self) -> None:
        """Take the slot's hook off its host module (if it has one)."""
        if self._hook_id is not None:
            target = self.target
            for hooks in (
                target._forward_hooks,
                target._forward_hooks_with_kwargs,
                target._forward_hooks_always_called,
            ):
                hooks.pop(self._hook_id, None)
            self._hook_id = None

    @property
    def hooked(self) -> bool:
        """Whether the slot's forward hook is registered on its host module now."""
        return self._hook_id is not None

    # ----------------------------------------------------------------- state
    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def seed_param_count(self) -> int:
        return 0 if self.seed is None else sum(p.numel() for p in self.seed.parameters())

    def report(self) -> SeedStateReport:
        """This slot's state for ``TrainingSignals.seeds``."""
        m = self.metrics
        return SeedStateReport(
            slot_id=self.slot_id,
            stage=self.stage,
            seed_id=self.seed_id,
            blueprint=self.blueprint,
            alpha=float(self.alpha),
            epochs_in_stage=self.epochs_in_stage,
            params=self.seed_param_count(),
            improvement=m.improvement,
            contribution=m.contribution,
            contribution_loss=m.contribution_loss,
            seed_grad_norm=m.seed_grad_norm,
            host_grad_norm=m.host_grad_norm,
            embargo_epochs_left=self.embargo_left,
        )

    def lifecycle_state(self) -> dict[str, Any]:
        """This slot's lifecycle as JSON-able builtins (weights travel in the model's ``state_dict``)."""
        return {
            "module_name": self.module_name,
            "stage": self.stage.name,
            "blueprint": self.blueprint,
            "blueprint_config": dict(self.blueprint_config),
            "seed_id": self.seed_id,
            "alpha": float(self.alpha),
            "epochs_in_stage": self.epochs_in_stage,
            "embargo_left": self.embargo_left,
            "feature_shape": list(self.feature_shape) if self.feature_shape is not None else None,
            "layer_kind": self.layer_kind,
            "ramp_from": float(self.ramp_from),
            "ramp_epochs": self.ramp_epochs,
            "metrics": asdict(self.metrics),
        }

    def prepare_restore(self, raw: Mapping[str, Any]) -> Callable[[], None]:
        """Check :meth:`lifecycle_state` output and rebuild its seed; returns what applies it.

        Nothing changes until the returned function is called, so a caller can
        check every slot first and leave the model untouched when one is bad
        (ValueError naming the slot and the field).
        """
        if raw.get("module_name") != self.module_name:
            raise ValueError(
                f"lifecycle state slot {self.slot_id!r} sits at {raw.get('module_name')!r}, "
                f"the model's at {self.module_name!r}"
            )
        try:
            stage = SeedStage[raw["stage"]]
        except KeyError:
            raise ValueError(f"lifecycle state slot {self.slot_id!r}: unknown stage {raw.get('stage')!r}") from None
        shape = tuple(int(s) for s in raw["feature_shape"]) if raw.get("feature_shape") is not None else None
        seed = None
        if stage in SEEDED_STAGES:
            if raw.get("blueprint") is None or shape is None:
                raise ValueError(
                    f"lifecycle state slot {self.slot_id!r}: stage {stage.name} needs a blueprint and shape"
                )
            spec = get_blueprint(raw["blueprint"])
            seed = spec.build(shape, raw.get("blueprint_config") or {}, layer_kind=raw.get("layer_kind"))
            seed.to(device=self.device, dtype=self.dtype)
        metrics = SlotMetrics(**raw.get("metrics", {}))

        def apply() -> None:
            self.stage, self.seed, self.feature_shape, self.metrics = stage, seed, shape, metrics
            self.blueprint = raw.get("blueprint")
            self.blueprint_config = dict(raw.get("blueprint_config") or {})
            self.seed_id = raw.get("seed_id")
            self.alpha = float(raw.get("alpha", 0.0))
            self.epochs_in_stage = int(raw.get("epochs_in_stage", 0))
            self.embargo_left = int(raw.get("embargo_left", 0))
            self.layer_kind = raw.get("layer_kind")
            self.ramp_from = float(raw.get("ramp_from", 0.0))
            self.ramp_epochs = int(raw.get("ramp_epochs", 0))
            self.sync_hook()

        return apply

    def extra_repr(self) -> str:
        return f"{self.slot_id!r} at {self.module_name!r}, stage={self.stage.name}, blueprint={self.blueprint!r}"
