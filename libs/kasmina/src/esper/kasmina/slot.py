"""SeedSlot: the place at one host layer where a seed can grow.

A slot attaches to a host submodule with a forward hook, and only while it has
work to do: a DORMANT (or GERMINATED, CULLED, ...) slot has no hook at all, so
the host runs exactly as it would bare, at the same speed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from esper.leyline import SeedStage, SeedStateReport

#: Stages whose slot changes (or may change) the host's features, so it needs its hook.
HOOKED_STAGES = frozenset(
    {
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    }
)
#: Stages that mix the seed into the output at the slot's alpha.
BLENDED_STAGES = frozenset({SeedStage.BLENDING, SeedStage.SHADOWING, SeedStage.PROBATIONARY})
#: Stages in which a seed module exists.
SEEDED_STAGES = frozenset(
    {
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.SHADOWING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    }
)
#: Stages in which the seed reads a detached copy of the host features.
ISOLATED_STAGES = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING})

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
    - BLENDING, SHADOWING, PROBATIONARY: ``alpha * seed(h) + (1 - alpha) * h``;
    - FOSSILIZED: ``seed(h)``.
    """

    def __init__(self, slot_id: str, module_name: str, target: nn.Module, in_sequence_model: bool = False) -> None:
        super().__init__()
        self.slot_id = slot_id
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
            return h + (s - s.detach())
        if stage in BLENDED_STAGES:
            s = self.seed(h)  # type: ignore[misc]
            if self.alpha == 1.0:
                return s
            return self.alpha * s + (1.0 - self.alpha) * h
        if stage is SeedStage.FOSSILIZED:
            return self.seed(h)  # type: ignore[misc]
        return h

    def _seed_input(self, h: torch.Tensor) -> torch.Tensor:
        """What an isolated seed reads: a detached copy of the host features."""
        return h.detach()

    def _forward_override(self, h: torch.Tensor) -> torch.Tensor:
        assert self._override is not None
        mode, alpha = self._override
        if mode == _OFF or self.seed is None:
            return h
        s = self.seed(self._seed_input(h) if self.stage in ISOLATED_STAGES else h)
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
        self.layer_kind = infer_layer_kind(self.target, self.feature_shape, self.in_sequence_model)

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

    def extra_repr(self) -> str:
        return f"{self.slot_id!r} at {self.module_name!r}, stage={self.stage.name}, blueprint={self.blueprint!r}"


_TRANSFORMER_BLOCKS = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_SEQUENCE_MODULES = (nn.Linear, nn.LayerNorm, nn.Embedding, *_TRANSFORMER_BLOCKS)


def infer_layer_kind(module: nn.Module, feature_shape: tuple[int, ...], in_sequence_model: bool = False) -> str | None:
    """The layer kind of per-sample features: rank 1 linear, rank 3 conv2d, rank 2 sequence or conv1d.

    Rank-2 features are (T, D) sequences after modules that act on the last
    dimension (Linear, LayerNorm, attention, transformer layers) or anywhere
    inside a transformer (``in_sequence_model``), else (C, L) conv1d maps.
    Other ranks have no kind (no blueprint serves them): None.
    """
    rank = len(feature_shape)
    if rank == 1:
        return "linear"
    if rank == 3:
        return "conv2d"
    if rank == 2:
        return "sequence" if in_sequence_model or isinstance(module, _SEQUENCE_MODULES) else "conv1d"
    return None


def within_sequence_model(host: nn.Module, module_name: str) -> bool:
    """Whether the submodule ``module_name`` of ``host`` sits inside a transformer or attention block."""
    node = host
    for part in module_name.split(".")[:-1]:
        if isinstance(node, _TRANSFORMER_BLOCKS):
            return True
        node = node.get_submodule(part)
    return isinstance(node, _TRANSFORMER_BLOCKS)
