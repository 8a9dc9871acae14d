"""Prometheus metrics of every run, on a registry of Nissa's own.

Each :class:`NissaMetrics` owns a ``CollectorRegistry`` (never the process-wide
one), so several instances and tests do not collide; the service serves
``metrics.registry``. Per-run series carry a ``run_id`` label; call
:meth:`NissaMetrics.forget_run` when a run is over to drop them.

The command round trip is the time from a command's envelope ``produced_at``
(Tamiyo publishing it) to its result's envelope ``produced_at`` (Tolaria
reporting it), matched by ``command_id``. Both clocks are the producers', so the
number is only as good as their clock sync; a negative difference is counted as
the anomaly ``clock_skew`` and observed as 0.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    CommandStatus,
    SeedStage,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.nissa.reasons import ReasonCategories

#: Seconds; commands are applied at the next safe boundary (often the end of an epoch).
ROUND_TRIP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Commands remembered while waiting for their result; the oldest are forgotten beyond this.
MAX_PENDING_COMMANDS = 10_000
_MAX_KIND_LENGTH = 48
CONTENT_TYPE = CONTENT_TYPE_LATEST


class PendingCommand(NamedTuple):
    run_id: str
    action: str
    published_at: float


class NissaMetrics:
    """The metrics Nissa exports, and the state needed to compute them (pending commands)."""

    def __init__(self, registry: CollectorRegistry | None = None, max_pending: int = MAX_PENDING_COMMANDS) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_pending = max_pending
        self._pending: OrderedDict[str, PendingCommand] = OrderedDict()
        self._reasons = ReasonCategories()
        r = self.registry
        run = ["run_id"]
        self.val_accuracy = Gauge(
            "esper_val_accuracy", "Validation accuracy (fraction) of the last epoch.", run, registry=r
        )
        self.train_accuracy = Gauge(
            "esper_train_accuracy", "Training accuracy (fraction), last epoch.", run, registry=r
        )
        self.val_loss = Gauge("esper_val_loss", "Validation loss of the last epoch.", run, registry=r)
        self.train_loss = Gauge("esper_train_loss", "Training loss of the last epoch.", run, registry=r)
        self.epoch = Gauge("esper_epoch", "Last epoch reported by the trainer.", run, registry=r)
        self.plateau_epochs = Gauge(
            "esper_plateau_epochs", "Epochs without validation loss improvement.", run, registry=r
        )
        self.params = Gauge("esper_params", "Parameters of the model, host and seeds.", run, registry=r)
        self.seeds = Gauge("esper_seeds", "Seed slots per lifecycle stage.", ["run_id", "stage"], registry=r)
        self.seed_alpha = Gauge(
            "esper_seed_alpha", "Blend alpha per slot (research profile).", ["run_id", "slot_id"], registry=r
        )
        self.seed_contribution = Gauge(
            "esper_seed_contribution",
            "Counterfactual validation accuracy contribution per slot (research profile).",
            ["run_id", "slot_id"],
            registry=r,
        )
        self.decisions = Counter(
            "esper_decisions_total", "Policy decisions by action.", ["run_id", "action"], registry=r
        )
        self.decisions_rejected = Counter(
            "esper_decisions_rejected_total",
            "Decisions the safety monitor rejected, by reason category.",
            ["run_id", "reason"],
            registry=r,
        )
        self.commands = Counter(
            "esper_commands_total", "Command results by action and status.", ["run_id", "action", "status"], registry=r
        )
        self.command_round_trip = Histogram(
            "esper_command_round_trip_seconds",
            "Command published -> its result published (envelope produced_at), matched by command_id.",
            run,
            buckets=ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.seed_transitions = Counter(
            "esper_seed_transitions_total",
            "Seed lifecycle transitions by target stage.",
            ["run_id", "to_stage"],
            registry=r,
        )
        self.events = Counter("esper_events_total", "Telemetry events by kind.", ["run_id", "kind"], registry=r)
        self.messages = Counter(
            "esper_nissa_messages_total", "Messages Nissa handled, by message type.", ["message_type"], registry=r
        )
        self.anomalies = Counter(
            "esper_nissa_anomalies_total",
            "Odd but valid messages Nissa recorded anyway (non_finite_value, unmatched_result, ...).",
            ["kind"],
            registry=r,
        )

    # -- per message type ---------------------------------------------------------------

    def record_training(self, run_id: str, signals: TrainingSignals, slot_metrics: bool = False) -> None:
        """Set the run's gauges from one epoch's signals (NaN values are set as NaN and counted)."""
        for gauge, value in (
            (self.val_accuracy, signals.val_accuracy),
            (self.train_accuracy, signals.train_accuracy),
            (self.val_loss, signals.val_loss),
            (self.train_loss, signals.train_loss),
        ):
            if not math.isfinite(value):
                self.anomaly("non_finite_value")
            gauge.labels(run_id).set(value)
        self.epoch.labels(run_id).set(signals.epoch)
        self.plateau_epochs.labels(run_id).set(signals.plateau_epochs)
        self.params.labels(run_id).set(signals.params_total)
        counts = dict.fromkeys(SeedStage, 0)
        for report in signals.seeds:
            counts[report.stage] += 1
        # Every stage is set, zeros included, so a seed leaving a stage shows up as a drop.
        for stage, count in counts.items():
            self.seeds.labels(run_id, stage_label(stage)).set(count)
        if slot_metrics:
            for report in signals.seeds:
                self.seed_alpha.labels(run_id, report.slot_id).set(report.alpha)
                if report.contribution is not None:
                    self.seed_contribution.labels(run_id, report.slot_id).set(report.contribution)

    def record_decision(self, run_id: str, decision: AdaptationDecision) -> None:
        self.decisions.labels(run_id, decision.action.value).inc()
        if not decision.accepted:
            self.decisions_rejected.labels(run_id, self._reasons.categorize(decision.rejection_reason)).inc()

    def record_command(self, run_id: str, command: AdaptationCommand, published_at: float) -> None:
        """Remember when ``command`` was published, to time its round trip when the result comes."""
        if command.command_id in self._pending:
            return  # a re-published command keeps its first publication time
        self._pending[command.command_id] = PendingCommand(run_id, command.action.value, published_at)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.anomaly("pending_command_evicted")

    def record_result(self, run_id: str, result: CommandResult, produced_at: float) -> float | None:
        """Count the result and observe its round trip; returns the seconds, or None if the command is unknown."""
        self.commands.labels(run_id, result.action.value, result.status.value).inc()
        pending = self._pending.pop(result.command_id, None)
        if pending is None:
            if result.status is not CommandStatus.DUPLICATE:
                self.anomaly("unmatched_result")
            return None
        seconds = produced_at - pending.published_at
        if not math.isfinite(seconds) or seconds < 0:
            self.anomaly("clock_skew")
            seconds = 0.0
        self.command_round_trip.labels(run_id).observe(seconds)
        return seconds

    def record_transition(self, run_id: str, transition: SeedTransition) -> None:
        self.seed_transitions.labels(run_id, stage_label(transition.to_stage)).inc()

    def record_event(self, run_id: str, event: TelemetryEvent) -> None:
        self.events.labels(run_id, event_kind_label(event.kind)).inc()

    def record_message(self, message_type: str) -> None:
        self.messages.labels(message_type).inc()

    def anomaly(self, kind: str) -> None:
        """Count one odd message of ``kind`` (a short fixed name chosen by the caller)."""
        self.anomalies.labels(kind).inc()

    # -- housekeeping and export ----------------------------------------------------------

    @property
    def pending_commands(self) -> int:
        """Commands published whose result has not been seen yet."""
        return len(self._pending)

    def forget_run(self, run_id: str) -> None:
        """Drop every series and pending command of ``run_id`` (call when the run is archived and over)."""
        for metric in (
            self.val_accuracy,
            self.train_accuracy,
            self.val_loss,
            self.train_loss,
            self.epoch,
            self.plateau_epochs,
            self.params,
            self.seeds,
            self.seed_alpha,
            self.seed_contribution,
            self.decisions,
            self.decisions_rejected,
            self.commands,
            self.command_round_trip,
            self.seed_transitions,
            self.events,
        ):
            metric.remove_by_labels({"run_id": run_id})
        for command_id in [cid for cid, p in self._pending.items() if p.run_id == run_id]:
            del self._pending[command_id]

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (serve with content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def stage_label(stage: SeedStage) -> str:
    """The ``stage`` label value of a seed stage: its Leyline name in lower case."""
    return SeedStage(stage).name.lower()


def event_kind_label(kind: str) -> str:
    """Event kinds come from code, not users, but are still cut short to keep label values sane."""
    kind = kind.strip().lower() or "unnamed"
    return kind[:_MAX_KIND_LENGTH]
