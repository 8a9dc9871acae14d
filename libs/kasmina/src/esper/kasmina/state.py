"""Checkpointing a MorphogeneticModel's lifecycle: to JSON-able builtins and back.

Weights travel in the ordinary ``state_dict``; this state says which seeds
exist (blueprint, config, stage) so they can be rebuilt before
``load_state_dict`` fills them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import msgspec

from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.slot import SEEDED_STAGES, SeedSlot, SlotMetrics
from esper.leyline import SeedStage, SeedTransition

if TYPE_CHECKING:
    from esper.kasmina.model import MorphogeneticModel

STATE_VERSION = 1


def lifecycle_state(model: MorphogeneticModel) -> dict[str, Any]:
    slots: dict[str, Any] = {}
    for slot_id, slot in model.slots.items():
        assert isinstance(slot, SeedSlot)
        slots[slot_id] = {
            "module_name": slot.module_name,
            "stage": slot.stage.name,
            "blueprint": slot.blueprint,
            "blueprint_config": dict(slot.blueprint_config),
            "seed_id": slot.seed_id,
            "alpha": float(slot.alpha),
            "epochs_in_stage": slot.epochs_in_stage,
            "embargo_left": slot.embargo_left,
            "feature_shape": list(slot.feature_shape) if slot.feature_shape is not None else None,
            "layer_kind": slot.layer_kind,
            "ramp_from": float(slot.ramp_from),
            "ramp_epochs": slot.ramp_epochs,
            "metrics": asdict(slot.metrics),
        }
    return {
        "version": STATE_VERSION,
        "seeds_made": model.seeds_made,
        "slots": slots,
        "events": [event.to_dict() for event in model.events],
    }


def restore_lifecycle(model: MorphogeneticModel, state: Mapping[str, Any]) -> None:
    """Validate everything first, then apply: a bad state raises ValueError and changes nothing."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"lifecycle state version {state.get('version')!r} is not {STATE_VERSION}")
    saved = state.get("slots")
    if not isinstance(saved, Mapping) or set(saved) != set(model.slots):
        got = sorted(saved) if isinstance(saved, Mapping) else saved
        raise ValueError(f"lifecycle state slots {got!r} do not match the model's slots {sorted(model.slots)}")
    try:
        events = [msgspec.convert(e, SeedTransition) for e in state.get("events", [])]
    except msgspec.ValidationError as exc:
        raise ValueError(f"lifecycle state events: {exc}") from None
    plans = []
    for slot_id, raw in saved.items():
        slot = model.slots[slot_id]
        assert isinstance(slot, SeedSlot)
        if raw.get("module_name") != slot.module_name:
            raise ValueError(
                f"lifecycle state slot {slot_id!r} sits at {raw.get('module_name')!r}, "
                f"the model's at {slot.module_name!r}"
            )
        try:
            stage = SeedStage[raw["stage"]]
        except KeyError:
            raise ValueError(f"lifecycle state slot {slot_id!r}: unknown stage {raw.get('stage')!r}") from None
        shape = tuple(int(s) for s in raw["feature_shape"]) if raw.get("feature_shape") is not None else None
        seed = None
        if stage in SEEDED_STAGES:
            if raw.get("blueprint") is None or shape is None:
                raise ValueError(f"lifecycle state slot {slot_id!r}: stage {stage.name} needs a blueprint and shape")
            spec = get_blueprint(raw["blueprint"])
            seed = spec.build(shape, raw.get("blueprint_config") or {}, layer_kind=raw.get("layer_kind"))
            seed.to(device=slot.device, dtype=slot.dtype)
        metrics = SlotMetrics(**raw.get("metrics", {}))
        plans.append((slot, stage, seed, shape, metrics, raw))
    for slot, stage, seed, shape, metrics, raw in plans:
        slot.stage = stage
        slot.seed = seed
        slot.blueprint = raw.get("blueprint")
        slot.blueprint_config = dict(raw.get("blueprint_config") or {})
        slot.seed_id = raw.get("seed_id")
        slot.alpha = float(raw.get("alpha", 0.0))
        slot.epochs_in_stage = int(raw.get("epochs_in_stage", 0))
        slot.embargo_left = int(raw.get("embargo_left", 0))
        slot.feature_shape = shape
        slot.layer_kind = raw.get("layer_kind")
        slot.ramp_from = float(raw.get("ramp_from", 0.0))
        slot.ramp_epochs = int(raw.get("ramp_epochs", 0))
        slot.metrics = metrics
        slot.sync_hook()
    model.seeds_made = int(state.get("seeds_made", 0))
    model.events = events
