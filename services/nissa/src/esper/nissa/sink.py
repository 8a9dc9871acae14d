"""Nissa's entry point for one message: metrics, archive and narrative, as the profile says.

The service's bus handler decodes each stream entry with ``esper.leyline.decode``
and calls :meth:`Nissa.handle`. Odd but valid messages (NaN accuracy, a result
for a command never seen, a run id that cannot name a directory, a redelivered
message) are logged and counted in ``esper_nissa_anomalies_total``; they never
raise. The one exception is an archive that cannot be written (disk full,
permissions): that ``OSError`` propagates before anything is counted, so the
bus redelivers the message instead of Nissa silently losing it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    Envelope,
    Message,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.nissa.archive import RunArchive
from esper.nissa.metrics import NissaMetrics
from esper.nissa.narrative import NarrativeWriter
from esper.nissa.profiles import DEFAULT_PROFILE, DiagnosticProfile, get_profile
from esper.nissa.runs import InvalidRunIdError, check_run_id

log = logging.getLogger(__name__)

#: Message ids remembered to drop redeliveries (the bus delivers at least once).
DEDUPE_WINDOW = 100_000
#: Bytes at the end of a run's archive read back for the ids already archived (about 4,000 events).
RECALL_BYTES = 4 * 1024 * 1024
#: Runs whose archive position is remembered (a forgotten run is simply read back again).
RECALL_RUNS = 10_000


class Nissa:
    """The telemetry sink: feed it every decoded envelope of every run.

    ``root`` holds one folder per run (``events.jsonl``, ``narrative.md``);
    ``profile`` is a :class:`DiagnosticProfile` or its name
    (``minimal``/``standard``/``research``); ``metrics`` defaults to a fresh
    :class:`NissaMetrics` on its own registry.
    """

    def __init__(
        self,
        root: Path,
        profile: DiagnosticProfile | str = DEFAULT_PROFILE,
        metrics: NissaMetrics | None = None,
        dedupe_window: int = DEDUPE_WINDOW,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.root = Path(root)
        self.metrics = metrics if metrics is not None else NissaMetrics()
        self.archive = RunArchive(self.root)
        self.narrative: NarrativeWriter | None = None
        if self.profile.narrative:
            self.narrative = NarrativeWriter(
                self.root,
                narrate_epochs=self.profile.narrate_epochs,
                narrate_waits=self.profile.narrate_waits,
                narrate_all_commands=self.profile.narrate_all_commands,
            )
        self.dedupe_window = dedupe_window
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: Per run: how far its archive has been read back (bytes).
        self._recalled: OrderedDict[str, int] = OrderedDict()

    def handle(self, envelope: Envelope[Message], redelivered: bool = False) -> None:
        """Record one envelope. Raises only ``OSError`` from an archive write (see the module docstring).

        Archive exactly once, across restarts too: the first message of a run
        since Nissa started, and every ``redelivered`` one (the bus' delivery
        count above 1), first reads the ids archived since the run was last read
        back (its last ``RECALL_BYTES`` at most), so a message archived by a Nissa
        that died before acknowledging it, or by a replica that died, is dropped.
        """
        if envelope.message_id not in self._seen and (redelivered or envelope.run_id not in self._recalled):
            self._recall(envelope.run_id)
        if envelope.message_id in self._seen:
            self.metrics.anomaly("duplicate_delivery")
            log.debug("dropping redelivered message %s (%s)", envelope.message_id, envelope.message_type)
            return
        run_ok = self._run_id_ok(envelope)
        if run_ok and self.profile.archives(envelope.message_type):
            self.archive.append(envelope)  # an OSError here propagates: the bus will redeliver
        self._remember(envelope.message_id)
        self.metrics.record_message(envelope.message_type)
        try:
            self._record_metrics(envelope)
        except Exception:
            self.metrics.anomaly("metrics_failed")
            log.exception("metrics of %s %s failed", envelope.message_type, envelope.message_id)
        if run_ok and self.narrative is not None:
            try:
                self.narrative.observe(envelope)
            except Exception:
                self.metrics.anomaly("narrative_failed")
                log.exception("narrative of %s %s failed", envelope.message_type, envelope.message_id)

    def narrative_lines(self, run_id: str) -> list[str]:
        """The narrative written for ``run_id`` so far (empty under a profile without narrative)."""
        return self.narrative.lines(run_id) if self.narrative is not None else []

    def forget_run(self, run_id: str) -> None:
        """Drop the run's metric series and pending commands (its files stay); for runs that are over."""
        self.metrics.forget_run(run_id)

    def _record_metrics(self, envelope: Envelope[Message]) -> None:
        run_id, message = envelope.run_id, envelope.payload
        match message:
            case TrainingSignals():
                self.metrics.record_training(run_id, message, slot_metrics=self.profile.slot_metrics)
            case AdaptationDecision():
                self.metrics.record_decision(run_id, message)
            case AdaptationCommand():
                self.metrics.record_command(run_id, message, envelope.produced_at)
            case CommandResult():
                self.metrics.record_result(run_id, message, envelope.produced_at)
            case SeedTransition():
                self.metrics.record_transition(run_id, message)
            case TelemetryEvent():
                self.metrics.record_event(run_id, message)

    def _run_id_ok(self, envelope: Envelope[Message]) -> bool:
        try:
            check_run_id(envelope.run_id)
        except InvalidRunIdError as exc:
            self.metrics.anomaly("invalid_run_id")
            log.warning("not archiving %s %s: %s", envelope.message_type, envelope.message_id, exc)
            return False
        return True

    def _recall(self, run_id: str) -> None:
        try:
            check_run_id(run_id)
            ids, end = self.archive.message_ids_since(run_id, self._recalled.get(run_id, 0), RECALL_BYTES)
        except (InvalidRunIdError, OSError) as exc:  # nothing archived can be read back: nothing to drop
            log.debug("not reading back the archive of %r: %s", run_id, exc)
            return
        for message_id in ids:
            self._remember(message_id)
        self._recalled[run_id] = end
        self._recalled.move_to_end(run_id)
        while len(self._recalled) > RECALL_RUNS:
            self._recalled.popitem(last=False)

    def _remember(self, message_id: str) -> None:
        self._seen[message_id] = None
        while len(self._seen) > self.dedupe_window:
            self._seen.popitem(last=False)
