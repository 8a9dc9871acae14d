"""Checkpointing a MorphogeneticModel's lifecycle: to JSON-able builtins and back.

Weights travel in the ordinary ``state_dict``; this state says which seeds
exist (blueprint, config, stage) so they can be rebuilt before
``load_state_dict`` fills them in. Each :class:`SeedSlot` saves and restores
its own part; this module adds the model's event log and seed counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from esper.kasmina.model import MorphogeneticModel
from esper.leyline import SeedTransition

#: Version of :func:`lifecycle_state`'s layout.
STATE_VERSION = 1


def lifecycle_state(model: MorphogeneticModel) -> dict[str, Any]:
    """Every slot's lifecycle state and the event log, as JSON-able builtins (checkpoints)."""
    slots = {slot_id: model.slot(slot_id).lifecycle_state() for slot_id in model.slots}
    events = [event.to_dict() for event in model.events]
    return {"version": STATE_VERSION, "seeds_made": model.seeds_made, "slots": slots, "events": events}


def restore_lifecycle(model: MorphogeneticModel, state: Mapping[str, Any]) -> None:
    """Restore :func:`lifecycle_state` output, rebuilding seed modules so ``load_state_dict`` then fits.

    Everything is checked first: a bad state raises ValueError and changes nothing.
    """
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
    for apply in [model.slot(slot_id).prepare_restore(raw) for slot_id, raw in saved.items()]:
        apply()
    model.seeds_made = int(state.get("seeds_made", 0))
    model.events = events
