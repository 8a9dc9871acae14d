"""MorphogeneticModel: a host network with seed slots, and the seed lifecycle that drives them.

Every stage change goes through Leyline's transition table and, for forward
steps, its gate; a refused change raises and leaves the slot, its seed and the
event log exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.config import KasminaConfig, alpha_progress
from esper.kasmina.errors import GateFailedError, NoForwardStepError
from esper.kasmina.layout import DataFlow, within_sequence_model
from esper.kasmina.slot import SeedSlot, SlotMetrics
from esper.leyline import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    SEEDED_STAGES,
    Gate,
    GateInputs,
    SeedStage,
    SeedStateReport,
    SeedTransition,
    check_transition,
    evaluate,
)
from esper.leyline.stages import next_stage

ConfigValue = int | float | str | bool
Layouts = Mapping[str, str] | None


class MorphogeneticModel(nn.Module):
    """A host ``nn.Module`` with named seed slots at some of its submodules.

    ``forward`` is the host's own forward; slots act at their layers through
    forward hooks. Build one with :func:`wrap`.
    """

    def __init__(
        self, host: nn.Module, slots: Mapping[str, str], config: KasminaConfig | None = None, layouts: Layouts = None
    ) -> None:
        super().__init__()
        self.host = host
        self.config = config or KasminaConfig()
        self.slots = nn.ModuleDict()
        self.events: list[SeedTransition] = []
        self.seeds_made = 0
        #: for each unproven seed the host has learned with, the host's state when the seed joined its forward
        #: (TRAINING for a joint seed, BLENDING for an isolated one): culling the seed puts the host back
        #: (see :meth:`cull`), fossilizing it drops the copy; checkpoints carry them
        self.host_marks: dict[str, dict[str, torch.Tensor]] = {}
        modules = dict(host.named_modules())
        taken: dict[str, str] = {}
        unknown = sorted(set(layouts or {}) - set(slots))
        if unknown:
            raise ValueError(f"field 'layouts': no slots {unknown} (slots: {', '.join(slots) or 'none'})")
        for slot_id, module_name in slots.items():
            if not isinstance(slot_id, str) or not slot_id.isidentifier():
                raise ValueError(f"slot id {slot_id!r} must be a Python identifier (it names a submodule)")
            if module_name not in modules or module_name == "":
                raise ValueError(
                    f"slot {slot_id!r}: host has no submodule named {module_name!r} "
                    f"(submodules: {', '.join(n for n in modules if n) or 'none'})"
                )
            if module_name in taken:
                raise ValueError(
                    f"slot {slot_id!r}: module {module_name!r} already carries slot {taken[module_name]!r}"
                )
            taken[module_name] = slot_id
            in_sequence = within_sequence_model(host, module_name)
            layout = (layouts or {}).get(slot_id)
            self.slots[slot_id] = SeedSlot(
                slot_id, module_name, modules[module_name], in_sequence, layout, isolate=self.config.isolate_seeds
            )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The host's forward with every slot acting at its layer."""
        return self.host(*args, **kwargs)

    def slot(self, slot_id: str) -> SeedSlot:
        """The slot called ``slot_id``; ValueError listing the known ids otherwise."""
        if slot_id not in self.slots:
            raise ValueError(f"unknown slot {slot_id!r} (slots: {', '.join(self.slots) or 'none'})")
        slot: SeedSlot = self.slots[slot_id]
        return slot

    def _slots(self) -> Iterator[SeedSlot]:
        for slot in self.slots.values():
            assert isinstance(slot, SeedSlot)
            yield slot

    @torch.no_grad()
    def probe(self, *example_inputs: Any, **example_kwargs: Any) -> None:
        """Run one no-grad forward so every slot learns its per-sample feature shape and layer kind.

        The forward runs in eval mode (restored afterwards) so that probing does
        not move batch-norm running statistics. Layouts: as declared, else along the data flow.
        """
        slots = list(self._slots())
        modes = {module: module.training for module in self.modules()}
        try:
            self.eval()
            for slot in slots:
                slot._probing = True
                slot.sync_hook()
            flow = DataFlow(self.host)
            with flow.record():
                self.host(*example_inputs, **example_kwargs)
            for slot in slots:
                if slot.declared_layout is None and slot.feature_shape is not None:
                    slot.layer_kind = flow.layout(slot.module_name, slot.feature_shape, slot.in_sequence_model)
        finally:
            for slot in slots:
                slot._probing = False
                slot.sync_hook()
            for module, training in modes.items():
                module.training = training
        missing = [s.slot_id for s in slots if s.feature_shape is None]
        if missing:
            raise ValueError(f"probe: slots {missing} saw no output (their modules did not run in the forward pass)")

    # ----------------------------------------------------------------- lifecycle
    def germinate(
        self,
        slot_id: str,
        blueprint: str,
        config: Mapping[str, ConfigValue] | None = None,
        *,
        epoch: int,
        reason: str,
        seed: nn.Module | None = None,
    ) -> SeedTransition:
        """Gate G0, then build ``blueprint`` at the slot on its current device and dtype: DORMANT -> GERMINATED.

        ``seed``: a module already made for this blueprint, config and slot (a
        compiled kernel, :class:`esper.kasmina.kernels.KernelLoader`) used instead
        of building one. Raises GateFailedError (unknown slot or blueprint, slot
        not DORMANT) and ValueError (slot not probed, blueprint or config not
        fitting the slot's shape).
        """
        known_slot = slot_id in self.slots
        try:
            spec = get_blueprint(blueprint)
            known_blueprint = True
        except ValueError:
            known_blueprint = False
        stage = self.slot(slot_id).stage if known_slot else SeedStage.DORMANT
        inputs = GateInputs(stage=stage, slot_known=known_slot, blueprint_known=known_blueprint)
        result = evaluate(Gate.G0_GERMINATE, inputs, self.config.thresholds)
        if not result.passed:
            why = f"{result.reason}: slot {slot_id!r}, blueprint {blueprint!r}"
            raise GateFailedError(Gate.G0_GERMINATE, why, slot_id)
        slot = self.slot(slot_id)
        check_transition(slot.stage, SeedStage.GERMINATED, slot_id)
        if slot.feature_shape is None:
            raise ValueError(f"slot {slot_id!r} does not know its feature shape yet: call model.probe(example_input)")
        if slot.layer_kind is None:
            raise ValueError(f"slot {slot_id!r}: no blueprint serves features of shape {slot.feature_shape}")
        resolved = spec.resolve(slot.feature_shape, config, layer_kind=slot.layer_kind).config
        if seed is None:
            seed = spec.build(slot.feature_shape, config, layer_kind=slot.layer_kind)
        seed.to(device=slot.device, dtype=slot.dtype)
        seed_id = f"{slot_id}-{self.seeds_made}"
        event = self._event(slot, SeedStage.GERMINATED, epoch, _with_verdict(result.reason, reason), seed_id, blueprint)
        self.seeds_made += 1
        slot.seed = seed
        slot.blueprint = blueprint
        slot.blueprint_config = resolved
        slot.seed_id = seed_id
        slot.metrics = SlotMetrics()
        self._enter(slot, SeedStage.GERMINATED, event)
        return event

    def advance(self, slot_id: str, *, epoch: int, reason: str) -> SeedTransition:
        """One gated forward step: GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY -> FOSSILIZED.

        The gate (G1..G5) reads the slot's recorded metrics. GateFailedError if
        it refuses, NoForwardStepError (an IllegalTransitionError) where the
        stage has no forward step; either way nothing changes.
        """
        slot = self.slot(slot_id)
        target = next_stage(slot.stage) if slot.stage in ACTIVE_STAGES else None
        if target is None:
            raise NoForwardStepError(slot.stage, slot_id)
        check_transition(slot.stage, target, slot_id)
        gate = Gate.for_target(target)
        assert gate is not None
        m = slot.metrics
        inputs = GateInputs(
            stage=slot.stage,
            epochs_in_stage=slot.epochs_in_stage,
            seed_built=slot.seed is not None,
            improvement=m.improvement,
            isolation_violations=m.isolation_violations,
            alpha=float(slot.alpha),
            contribution=m.contribution,
            seed_grad_norm=m.seed_grad_norm,
        )
        result = evaluate(gate, inputs, self.config.thresholds)
        if not result.passed:
            raise GateFailedError(gate, result.reason, slot_id)
        event = self._event(slot, target, epoch, _with_verdict(result.reason, reason))
        self._enter(slot, target, event)
        if target is (SeedStage.BLENDING if slot.isolate else SeedStage.TRAINING):
            # from here on the host learns with the seed in its forward
            self.host_marks[slot_id] = {k: v.detach().clone() for k, v in self.host.state_dict().items()}
        if target is SeedStage.TRAINING and not slot.isolate:
            slot.alpha = 1.0  # what reports and observers see: the seed is in the forward at full weight
        elif target is SeedStage.FOSSILIZED:
            self.host_marks.pop(slot_id, None)
        if target is SeedStage.BLENDING:
            # A joint seed has been in the forward at full weight since TRAINING: its ramp is already done.
            start = 0.0 if slot.isolate else 1.0
            slot.alpha, slot.ramp_from, slot.ramp_epochs = start, start, 0
        elif target in BLENDED_STAGES or target is SeedStage.FOSSILIZED:
            slot.alpha = 1.0
        return event

    def cull(
        self, slot_id: str, *, epoch: int, reason: str, val_loss: Callable[[], float] | None = None
    ) -> SeedTransition:
        """Remove a slot's seed: any stage GERMINATED..PROBATIONARY -> CULLED (never gated).

        Once a seed is in the forward (a joint one from TRAINING, an isolated one from BLENDING)
        the host learns with it and adapts to it: culling it puts the host's own parameters and
        buffers back to their values when the seed joined (other seeds keep theirs), so an
        unproven seed leaves no trace on the host. An isolated seed culled in TRAINING never
        touched it. With ``val_loss`` (the caller's validation loss) the host is put back only
        where that lowers it (:meth:`restore_pays`), else kept as it is; the trainers pass it.
        """
        slot = self.slot(slot_id)
        check_transition(slot.stage, SeedStage.CULLED, slot_id)
        if slot_id in self.host_marks:
            if val_loss is None or self.restore_pays(slot_id, val_loss):
                self.host.load_state_dict(self.host_marks[slot_id])
                reason = f"{reason}; host restored to its state when the seed joined"
            else:
                kept = "without the seed it does better than as it was when the seed joined"
                reason = f"{reason}; host kept as it is ({kept})"
            del self.host_marks[slot_id]
        event = self._event(slot, SeedStage.CULLED, epoch, reason)
        slot.seed = None
        slot.alpha = 0.0
        self._enter(slot, SeedStage.CULLED, event)
        return event

    def restore_pays(self, slot_id: str, loss: Callable[[], float]) -> bool:
        """Whether culling ``slot_id``'s seed should put the host back as it was when the seed joined.

        Undoing protects the host from what it learned with a seed that is then
        culled, but it also undoes everything else the host learned since: with
        several seeds in flight, seeds that stay were trained on the host as it
        is now, and an old host under them can cost more than the culled seed
        ever did. ``loss()`` (the caller's validation loss) is measured with the
        seed switched off, on the host as it is and on the host as it was; True
        when the old one is lower (on a tie the host stays). The model is left
        exactly as it was. The slot must hold a copy (``slot_id in host_marks``).
        """
        now = {k: v.detach().clone() for k, v in self.host.state_dict().items()}
        try:
            with self.seed_disabled(slot_id):
                kept = loss()
                self.host.load_state_dict(self.host_marks[slot_id])
                restored = loss()
        finally:
            self.host.load_state_dict(now)
        return restored < kept

    def set_alpha(self, slot_id: str, alpha: float, *, epoch: int, reason: str) -> None:
        """Set a BLENDING slot's alpha in [0, 1]; the schedule ramps on from there to 1 over a full tempo."""
        slot = self.slot(slot_id)
        if slot.stage is not SeedStage.BLENDING:
            raise ValueError(f"set_alpha: slot {slot_id!r} is {slot.stage.name}, alpha can be set only while BLENDING")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"set_alpha: alpha={alpha!r} must be in [0, 1] (slot {slot_id!r}, epoch {epoch})")
        slot.alpha, slot.ramp_from, slot.ramp_epochs = alpha, alpha, 0

    def end_epoch(self, epoch: int) -> list[SeedTransition]:
        """Epoch-boundary bookkeeping: count epochs, ramp BLENDING alphas, move culled slots through embargo."""
        made: list[SeedTransition] = []
        cfg = self.config
        for slot in self._slots():
            slot.epochs_in_stage += 1
            if slot.stage is SeedStage.BLENDING:
                slot.ramp_epochs += 1
                done = alpha_progress(cfg.alpha_schedule, slot.ramp_epochs / cfg.blend_epochs)
                slot.alpha = slot.ramp_from + (1.0 - slot.ramp_from) * done
            elif slot.stage is SeedStage.CULLED:
                made.append(self._step(slot, SeedStage.EMBARGOED, epoch, f"culled: embargo of {cfg.embargo_epochs}"))
                slot.embargo_left = cfg.embargo_epochs
            elif slot.stage is SeedStage.EMBARGOED:
                slot.embargo_left = max(0, slot.embargo_left - 1)
            if slot.stage is SeedStage.EMBARGOED and slot.embargo_left == 0:
                made.append(self._step(slot, SeedStage.RESETTING, epoch, "embargo over"))
                made.append(self._step(slot, SeedStage.DORMANT, epoch, "slot reset"))
        return made

    def record_metrics(
        self,
        slot_id: str,
        *,
        improvement: float | None = None,
        contribution: float | None = None,
        contribution_loss: float | None = None,
        seed_grad_norm: float | None = None,
        host_grad_norm: float | None = None,
        isolation_violations: int = 0,
    ) -> None:
        """Store what Tolaria measured for this slot; None leaves a value as it was, violations add up.

        ``improvement``: validation loss without the seed minus with it at alpha 1.
        ``contribution``: validation accuracy with the seed (current alpha; 1 while TRAINING) minus without.
        """
        m = self.slot(slot_id).metrics
        violations = isolation_violations
        if isinstance(violations, bool) or not isinstance(violations, int) or violations < 0:
            raise ValueError(f"record_metrics: isolation_violations={isolation_violations!r} must be an integer >= 0")
        for name, value in (
            ("improvement", improvement),
            ("contribution", contribution),
            ("contribution_loss", contribution_loss),
            ("seed_grad_norm", seed_grad_norm),
            ("host_grad_norm", host_grad_norm),
        ):
            if value is not None:
                setattr(m, name, float(value))
        m.isolation_violations += isolation_violations

    def _event(
        self,
        slot: SeedSlot,
        to: SeedStage,
        epoch: int,
        reason: str,
        seed_id: str | None = None,
        blueprint: str | None = None,
    ) -> SeedTransition:
        metrics = slot.metrics.as_floats()
        metrics["alpha"] = float(slot.alpha)
        metrics["epochs_in_stage"] = float(slot.epochs_in_stage)
        return SeedTransition(
            epoch=epoch,
            slot_id=slot.slot_id,
            from_stage=slot.stage,
            to_stage=to,
            reason=reason,
            seed_id=seed_id or slot.seed_id,
            blueprint=blueprint or slot.blueprint,
            metrics=metrics,
        )

    def _enter(self, slot: SeedSlot, to: SeedStage, event: SeedTransition) -> None:
        slot.stage = to
        slot.epochs_in_stage = 0
        if to not in SEEDED_STAGES:
            slot.seed = None
        if to is SeedStage.DORMANT:
            slot.blueprint, slot.blueprint_config, slot.seed_id = None, {}, None
            slot.alpha, slot.embargo_left, slot.metrics = 0.0, 0, SlotMetrics()
        slot.sync_hook()
        self.events.append(event)

    def _step(self, slot: SeedSlot, to: SeedStage, epoch: int, reason: str) -> SeedTransition:
        check_transition(slot.stage, to, slot.slot_id)
        event = self._event(slot, to, epoch, reason)
        self._enter(slot, to, event)
        return event

    # ----------------------------------------------------------------- counterfactuals
    @contextmanager
    def seed_disabled(self, slot_id: str) -> Iterator[None]:
        """Within: the slot outputs the host's features, as if it had no seed (the counterfactual "without")."""
        with self._override(slot_id, ("off", 0.0)):
            yield

    @contextmanager
    def alpha_override(self, slot_id: str, alpha: float) -> Iterator[None]:
        """Within: the slot blends its seed at ``alpha`` whatever its stage (alpha 1 = the seed alone)."""
        slot = self.slot(slot_id)
        if slot.seed is None:
            raise ValueError(f"alpha_override: slot {slot_id!r} is {slot.stage.name} and has no seed")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha_override: alpha={alpha!r} must be in [0, 1]")
        with self._override(slot_id, ("alpha", float(alpha))):
            yield

    @contextmanager
    def _override(self, slot_id: str, override: tuple[str, float]) -> Iterator[None]:
        slot = self.slot(slot_id)
        previous = slot._override
        slot._override = override
        slot.sync_hook()
        try:
            yield
        finally:
            slot._override = previous
            slot.sync_hook()

    # ----------------------------------------------------------------- parameters and reports
    def host_parameters(self) -> list[nn.Parameter]:
        """Host parameters plus those of fossilized seeds (a fossilized seed has joined the host)."""
        params = list(self.host.parameters())
        for slot in self._slots():
            if slot.stage is SeedStage.FOSSILIZED and slot.seed is not None:
                params.extend(slot.seed.parameters())
        return params

    def seed_parameters(self, slot_id: str | None = None) -> list[nn.Parameter]:
        """Parameters of live (germinated, not yet fossilized) seeds, of one slot or all."""
        slots = [self.slot(slot_id)] if slot_id is not None else list(self._slots())
        return [p for s in slots if s.stage in ACTIVE_STAGES and s.seed is not None for p in s.seed.parameters()]

    def param_count(self) -> int:
        """Host parameters plus every live and fossilized seed's."""
        return sum(p.numel() for p in self.host.parameters()) + sum(s.seed_param_count() for s in self._slots())

    def reports(self) -> list[SeedStateReport]:
        """One report per slot, in slot order, for ``TrainingSignals.seeds``."""
        return [slot.report() for slot in self._slots()]


def wrap(
    host: nn.Module, slots: Mapping[str, str], *, config: KasminaConfig | None = None, layouts: Layouts = None
) -> MorphogeneticModel:
    """Attach seed slots to named submodules of ``host`` (``{"s1": "features.2"}``) without changing its class.

    ``layouts`` declares slot layouts where inference could be wrong (``{"s1": "sequence"}``;
    ``conv1d``, ``conv2d``, ``sequence``, ``linear``/``vector``). Unknown module names raise
    ValueError naming them. Dormant slots add no hook: outputs are bit-identical to the bare host's.
    """
    return MorphogeneticModel(host, slots, config, layouts)


def _with_verdict(verdict: str, reason: str) -> str:
    """An event's reason: the gate's verdict, then the caller's reason.

    A policy that evaluated the same gate often quotes its verdict already;
    saying it twice only makes the record harder to read.
    """
    if not reason or reason == verdict:
        return verdict
    if verdict in reason:
        return reason
    return f"{verdict}; {reason}"
