"""Tamiyo's Prometheus metrics, in their own registry (``/metrics`` adds Oona's default one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds; dense below 50 ms, where the decision-latency target lies.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class TamiyoMetrics:
    """Decision latency, policy time, decisions by action, rejections by category, skipped telemetry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decision_latency = Histogram(
            "esper_tamiyo_decision_latency_seconds",
            "Telemetry received -> command and decision published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_seconds = Histogram(
            "esper_tamiyo_policy_seconds", "Time inside policy.decide", buckets=LATENCY_BUCKETS, registry=r
        )
        self.decisions = Counter(
            "esper_tamiyo_decisions_total", "Decisions by action and issuer", ["action", "issued_by"], registry=r
        )
        self.rejections = Counter(
            "esper_tamiyo_rejections_total",
            "Adaptations the safety monitor rejected",
            ["category"],
            registry=r,
        )
        self.skipped = Counter(
            "esper_tamiyo_skipped_telemetry_total", "Epochs not decided on, by why", ["why"], registry=r
        )
        self.runs = Gauge("esper_tamiyo_runs", "Runs Tamiyo knows, by state", ["state"], registry=r)
