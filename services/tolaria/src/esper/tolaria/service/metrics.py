"""Tolaria's Prometheus metrics, in their own registry (``/metrics`` adds Oona's default one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Epoch durations on CPU run from ~0.1 s (tests) to minutes (large hosts).
EPOCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0)


class TolariaMetrics:
    """``esper_tolaria_epochs_total``, ``esper_tolaria_epoch_seconds``,
    ``esper_tolaria_commands_total{action,status}``, ``esper_tolaria_active_runs``,
    ``esper_tolaria_runs_total{outcome}``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.epochs = Counter("esper_tolaria_epochs", "Training epochs completed", registry=self.registry)
        self.epoch_seconds = Histogram(
            "esper_tolaria_epoch_seconds",
            "Wall time of one epoch (training, evaluation, boundary)",
            buckets=EPOCH_BUCKETS,
            registry=self.registry,
        )
        self.commands = Counter(
            "esper_tolaria_commands",
            "Commands answered, by action and result status",
            ["action", "status"],
            registry=self.registry,
        )
        self.active_runs = Gauge("esper_tolaria_active_runs", "Runs this process is training", registry=self.registry)
        self.runs = Counter(
            "esper_tolaria_runs",
            "Runs ended, by outcome (finished, failed)",
            ["outcome"],
            registry=self.registry,
        )
