"""Kasmina: the morphogenetic body.

Seed slots attached to named layers of any ``nn.Module`` (:func:`wrap`),
blueprints that build seeds from a slot's feature shape, gradient isolation
while a seed trains, alpha blending, the gated lifecycle, an isolation monitor,
and :func:`export` to a plain module; :func:`suggest_slots` lists where slots can go.
"""

from esper.kasmina.blueprints import Blueprint, get_blueprint, list_blueprints
from esper.kasmina.config import ALPHA_SCHEDULES, KasminaConfig, alpha_progress
from esper.kasmina.errors import GateFailedError, NoForwardStepError
from esper.kasmina.export import export
from esper.kasmina.hosts import ConvHost1D, MLPHost
from esper.kasmina.model import MorphogeneticModel, wrap
from esper.kasmina.monitor import GradientIsolationMonitor
from esper.kasmina.slot import SeedSlot, SlotMetrics
from esper.kasmina.state import lifecycle_state, restore_lifecycle
from esper.kasmina.suggest import SlotSuggestion, format_suggestions, suggest_slots, suggested_slot_map
from esper.leyline import GateThresholds, SeedStage, SeedStateReport, SeedTransition

__all__ = [
    "ALPHA_SCHEDULES",
    "Blueprint",
    "ConvHost1D",
    "GateFailedError",
    "GateThresholds",
    "GradientIsolationMonitor",
    "KasminaConfig",
    "MLPHost",
    "MorphogeneticModel",
    "NoForwardStepError",
    "SeedSlot",
    "SeedStage",
    "SeedStateReport",
    "SeedTransition",
    "SlotMetrics",
    "SlotSuggestion",
    "alpha_progress",
    "export",
    "format_suggestions",
    "get_blueprint",
    "lifecycle_state",
    "list_blueprints",
    "restore_lifecycle",
    "suggest_slots",
    "suggested_slot_map",
    "wrap",
]
