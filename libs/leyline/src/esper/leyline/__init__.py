"""Leyline: every Esper contract, defined once.

Seed stages and their legal transitions, gates G0-G5, the wire messages, the
envelope and its msgpack codec, stream names and bus defaults, the observation
schema the policies read, and the schema version. Leyline never imports torch.
"""

from esper.leyline.codec import CodecError, decode, encode, encode_message, validate
from esper.leyline.commands import (
    RUN_ACTIONS,
    SLOT_ACTIONS,
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DecisionAction,
)
from esper.leyline.compile import BlueprintMetadata, CompileRequest, CompileResult, CompileStatus, KernelMetadata
from esper.leyline.deadletter import DeadLetter
from esper.leyline.envelope import Envelope, new_id
from esper.leyline.gates import Gate, GateInputs, GateResult, GateThresholds, evaluate
from esper.leyline.graph import LAYOUTS, BlueprintOption, GraphEdge, GraphNode, ModelGraph, NodeKind, SlotOptions
from esper.leyline.jobs import BUILTIN_TASKS, LR_SCHEDULES, PRECISIONS, TrainingJob, is_task_name
from esper.leyline.message import MESSAGE_TYPES, Message, Record
from esper.leyline.observation import (
    FEATURE_NAMES,
    OBSERVATION_SIZE,
    GlobalFeatures,
    SlotFeatures,
    feature_index,
    write_observation,
)
from esper.leyline.stages import (
    ACTIVE_STAGES,
    BLENDED_STAGES,
    HOOKED_STAGES,
    ISOLATED_STAGES,
    MEASURED_STAGES,
    SEEDED_STAGES,
    STEPPED_STAGES,
    TRANSITIONS,
    IllegalTransitionError,
    SeedStage,
    check_transition,
    is_legal,
)
from esper.leyline.telemetry import (
    EventKind,
    LayerHealth,
    LayerHealthReport,
    SeedStateReport,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.leyline.version import SCHEMA_VERSION, is_compatible

__all__ = [
    "BLENDED_STAGES",
    "BUILTIN_TASKS",
    "HOOKED_STAGES",
    "ISOLATED_STAGES",
    "LAYOUTS",
    "LR_SCHEDULES",
    "MEASURED_STAGES",
    "PRECISIONS",
    "RUN_ACTIONS",
    "SEEDED_STAGES",
    "SLOT_ACTIONS",
    "STEPPED_STAGES",
    "BlueprintOption",
    "EventKind",
    "GraphEdge",
    "GraphNode",
    "ModelGraph",
    "NodeKind",
    "SlotOptions",
    "is_task_name",
    "FEATURE_NAMES",
    "OBSERVATION_SIZE",
    "GlobalFeatures",
    "SlotFeatures",
    "Record",
    "feature_index",
    "validate",
    "write_observation",
    "ACTIVE_STAGES",
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "TRANSITIONS",
    "AdaptationCommand",
    "AdaptationDecision",
    "BlueprintMetadata",
    "CodecError",
    "CommandAction",
    "CommandResult",
    "CommandStatus",
    "CompileRequest",
    "CompileResult",
    "CompileStatus",
    "DeadLetter",
    "DecisionAction",
    "Envelope",
    "Gate",
    "GateInputs",
    "GateResult",
    "GateThresholds",
    "IllegalTransitionError",
    "KernelMetadata",
    "LayerHealth",
    "LayerHealthReport",
    "Message",
    "SeedStage",
    "SeedStateReport",
    "SeedTransition",
    "TelemetryEvent",
    "TrainingJob",
    "TrainingSignals",
    "check_transition",
    "decode",
    "encode",
    "encode_message",
    "evaluate",
    "is_compatible",
    "is_legal",
    "new_id",
]
