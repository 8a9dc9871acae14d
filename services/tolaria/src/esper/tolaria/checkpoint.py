"""Checkpoints: everything a run needs to continue exactly where it stopped.

One file, ``checkpoint.pt``, rewritten atomically at every epoch: model weights,
every optimizer, the slots' lifecycle, tracker, policy and governor state, the
epoch history, and the RNG states (python, numpy, torch, the data order
generator). Resuming on CPU reproduces the uninterrupted run bit for bit.

The tensors (weights, optimizer states, the data order) go through
``torch.save``; everything else (history, lifecycle, RNG states, tracker,
decisions: thousands of small Python objects) is pickled into one ``bytes``
field first, which the plain pickler writes in a fraction of the time
``torch.save``'s per-object hook takes. Format 1 files (all through
``torch.save``) still load.
"""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from esper.kasmina.state import lifecycle_state, restore_lifecycle
from esper.leyline import AdaptationDecision, LayerHealth
from esper.tolaria.steps import host_only_parameters
from esper.tolaria.trainer import EpochRecord, Trainer

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
#: the fields stored through torch.save itself; the rest travels pickled in ``state["rest"]``
TENSOR_FIELDS = ("model", "optimizers", "data_order", "host_marks")
_RECORD_FIELDS = tuple(f.name for f in fields(EpochRecord))


def save_checkpoint(trainer: Trainer, path: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write ``trainer``'s full state to ``path`` (a file, or a folder to hold ``checkpoint.pt``).

    ``meta`` is the caller's JSON-able run description (the CLI stores its arguments).
    """
    target = Path(path)
    if target.is_dir() or not target.suffix:
        target = target / CHECKPOINT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "meta": meta or {},
        "epoch": trainer.epoch,
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "host_marks": trainer.model.host_marks,
        "lifecycle": lifecycle_state(trainer.model),
        "optimizers": {name: opt.state_dict() for name, opt in trainer.optimizers.items()},
        "tracker": trainer.tracker.state_dict(),
        "policy": trainer.policy.state_dict() if trainer.policy is not None else None,
        "governor": trainer.governor.state_dict(),
        # shallow: dataclasses.asdict's deep copy of a long run's history cost more than everything else
        "history": [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in trainer.history],
        "decisions": list(trainer.decisions),  # msgspec structs pickle as they are
        "applied_commands": list(trainer.applied_commands),
        "published": trainer.published,
        "events_seen": trainer.events_seen,
        "graph_revision": trainer.graph_revision,
        "paused": trainer.paused,
        "stop_requested": trainer.stop_requested,
        "quiet_boundary": trainer.quiet_boundary,
        "params_initial": trainer.params_initial,
        "wall_seconds": trainer.wall_seconds,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "data": trainer.generator.get_state(),
        },
        "data_order": trainer.data_order,
        "data_batch": trainer.data_batch,
        "health": trainer.health.to_dict() if trainer.health is not None else None,
    }
    stored = {name: state.pop(name) for name in TENSOR_FIELDS}
    stored["format"] = state.pop("format")
    stored["rest"] = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    tmp = target.with_suffix(".tmp")
    torch.save(stored, tmp)
    os.replace(tmp, target)
    return target


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (or ``DIR/checkpoint.pt``); FileNotFoundError naming the path."""
    target = Path(path)
    if target.is_dir():
        target = target / CHECKPOINT_NAME
    if not target.is_file():
        raise FileNotFoundError(f"field 'resume': no checkpoint at {str(target)!r}")
    # our own file: it holds RNG states and plain python objects, not just tensors
    state: dict[str, Any] = torch.load(target, map_location="cpu", weights_only=False)
    if state.get("format") not in (1, FORMAT):
        raise ValueError(f"field 'format': checkpoint format {state.get('format')!r} is not 1 or {FORMAT}")
    if "rest" in state:
        state.update(pickle.loads(state.pop("rest")))
    return state


def restore_checkpoint(trainer: Trainer, state: dict[str, Any]) -> None:
    """Load ``state`` (from :func:`read_checkpoint`) into a freshly built ``trainer`` of the same run."""
    model = trainer.model
    restore_lifecycle(model, state["lifecycle"])
    model.load_state_dict(state["model"])
    host = model.host.state_dict()
    # "joint_marks" in checkpoints written while only joint seeds had marks; neither before joint seeds existed
    marks = state.get("host_marks", state.get("joint_marks", {}))
    model.host_marks = {slot_id: {k: v.to(host[k].device) for k, v in mark.items()} for slot_id, mark in marks.items()}
    # the host optimizer steps every parameter but those of seeds that had their own when saved
    separate = set(state["optimizers"]) - {"host"}
    trainer.optimizers = {"host": trainer._optimizer(host_only_parameters(model, separate))}
    for slot_id, slot in model.slots.items():
        if slot_id in state["optimizers"] and slot.seed is not None:
            trainer.optimizers[slot_id] = trainer.new_seed_optimizer(list(slot.seed.parameters()))
    missing = set(state["optimizers"]) - set(trainer.optimizers)
    if missing:
        raise ValueError(f"field 'optimizers': checkpoint has optimizers for {sorted(missing)} but no such seeds")
    for name, opt in trainer.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    trainer.tracker.load_state_dict(state["tracker"])
    if trainer.policy is not None and state["policy"] is not None:
        trainer.policy.load_state_dict(state["policy"])
    trainer.governor.load_state_dict(state["governor"])
    trainer.history = [EpochRecord(**r) for r in state["history"]]
    trainer.decisions = [_decision(d) for d in state["decisions"]]
    trainer.applied_commands = list(state["applied_commands"])
    trainer.epoch, trainer.step = state["epoch"], state["step"]
    trainer.published, trainer.events_seen = state["published"], state["events_seen"]
    trainer.paused = state["paused"]
    trainer.graph_revision = state.get("graph_revision", -1)  # the next graph continues the run's count
    if trainer.graph_revision >= 0:  # published before the checkpoint: held again, not published twice
        trainer.describe_graph()
    trainer.stop_requested = state.get("stop_requested", False)  # absent in checkpoints of older builds
    trainer.quiet_boundary = state.get("quiet_boundary", False)  # absent: short rounds until the policy waits
    trainer.params_initial = state["params_initial"]
    trainer.wall_seconds = state["wall_seconds"]
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    trainer.generator.set_state(rng["data"])
    trainer.data_order, trainer.data_batch = state.get("data_order"), state.get("data_batch", 0)
    health = state.get("health")
    trainer.health = msgspec.convert(health, LayerHealth) if health is not None else None
    trainer.governor.take_snapshot(trainer.epoch, model, trainer.optimizers)


def _decision(data: dict[str, Any] | AdaptationDecision) -> AdaptationDecision:
    return data if isinstance(data, AdaptationDecision) else msgspec.convert(data, AdaptationDecision)  # format 1
