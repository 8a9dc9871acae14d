"""Diagnostic profiles: how much Nissa records about a run.

Metrics are cheap and always exported; the profiles differ in what goes to
disk and into the narrative.

- ``minimal``: the lifecycle and control record only (seed transitions,
  commands, results, events, dead letters). No per-epoch signals on disk, no
  narrative. For long sweeps where only the outcome and the adaptations matter.
- ``standard`` (default): adds per-epoch training signals and the policy's
  decisions to the archive, and writes the narrative (decisions, transitions,
  command outcomes, events; WAIT decisions are left out).
- ``research``: every message, layer health included, per-slot gauges
  (alpha, contribution), and a narrative line for every epoch and every WAIT.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    DeadLetter,
    LayerHealth,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)


@dataclass(frozen=True, slots=True)
class DiagnosticProfile:
    """What Nissa records for every run.

    ``archived_types`` lists the ``message_type`` names written to the archive;
    ``archive_all`` archives every message type, including ones added to Leyline
    later. ``narrate_epochs`` writes a summary line per epoch, ``narrate_waits``
    a line per WAIT decision, ``narrate_all_commands`` a line per command
    published (otherwise only operator or override commands get one). ``slot_metrics`` exports per-slot gauges.
    """

    name: str
    archived_types: frozenset[str]
    archive_all: bool = False
    narrative: bool = True
    narrate_epochs: bool = False
    narrate_waits: bool = False
    narrate_all_commands: bool = False
    slot_metrics: bool = False

    def archives(self, message_type: str) -> bool:
        """Whether messages of ``message_type`` go to the run's archive."""
        return self.archive_all or message_type in self.archived_types

    @property
    def archives_layer_health(self) -> bool:
        return self.archives(LayerHealth.message_type)


_LIFECYCLE = frozenset(
    {
        SeedTransition.message_type,
        AdaptationCommand.message_type,
        CommandResult.message_type,
        TelemetryEvent.message_type,
        DeadLetter.message_type,
    }
)

MINIMAL = DiagnosticProfile(name="minimal", archived_types=_LIFECYCLE, narrative=False)
STANDARD = DiagnosticProfile(
    name="standard",
    archived_types=_LIFECYCLE | {TrainingSignals.message_type, AdaptationDecision.message_type},
)
RESEARCH = DiagnosticProfile(
    name="research",
    archived_types=_LIFECYCLE
    | {TrainingSignals.message_type, AdaptationDecision.message_type, LayerHealth.message_type},
    archive_all=True,
    narrate_epochs=True,
    narrate_waits=True,
    narrate_all_commands=True,
    slot_metrics=True,
)

#: profile name -> profile, in increasing order of detail.
PROFILES: dict[str, DiagnosticProfile] = {p.name: p for p in (MINIMAL, STANDARD, RESEARCH)}
DEFAULT_PROFILE = STANDARD


def get_profile(name: str) -> DiagnosticProfile:
    """The profile called ``name`` (case-insensitive); ``ValueError`` naming the known ones otherwise."""
    profile = PROFILES.get(name.strip().lower()) if isinstance(name, str) else None
    if profile is None:
        known = ", ".join(PROFILES)
        raise ValueError(f"field 'profile': unknown diagnostic profile (value {name!r}); known profiles: {known}")
    return profile
