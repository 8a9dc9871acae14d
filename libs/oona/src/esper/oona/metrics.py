"""Prometheus metrics of the bus, shared by both implementations.

Names follow Prometheus conventions (``_total`` counters, ``_seconds``
durations). Pass a :class:`BusMetrics` built on your own registry to keep
processes or tests apart; by default every bus reports to the process-wide
registry that ``prometheus_client.start_http_server`` serves.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BusMetrics:
    """The bus's counters, gauges and histograms on one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.published = Counter(
            "esper_oona_published_total", "Messages stored on a stream.", ["stream"], registry=registry
        )
        self.publish_failures = Counter(
            "esper_oona_publish_failures_total",
            "Publish calls that gave up because the bus stayed unavailable.",
            ["stream"],
            registry=registry,
        )
        self.consumed = Counter(
            "esper_oona_consumed_total",
            "Messages handled successfully and acknowledged.",
            ["stream", "group"],
            registry=registry,
        )
        self.handler_failures = Counter(
            "esper_oona_handler_failures_total", "Handler calls that raised.", ["stream", "group"], registry=registry
        )
        self.redeliveries = Counter(
            "esper_oona_redeliveries_total",
            "Messages delivered more than once (retries and reclaims).",
            ["stream", "group"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "esper_oona_dead_lettered_total",
            "Messages sent to the dead-letter stream, by reason (undecodable, max_deliveries).",
            ["stream", "group", "reason"],
            registry=registry,
        )
        self.reconnects = Counter(
            "esper_oona_reconnects_total",
            "Times a consumer lost the bus and waited to reconnect.",
            ["group"],
            registry=registry,
        )
        self.handler_duration = Histogram(
            "esper_oona_handler_duration_seconds",
            "Time spent in message handlers.",
            ["stream", "group"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "esper_oona_consumer_group_lag",
            "Entries in the stream not yet delivered to the group.",
            ["stream", "group"],
            registry=registry,
        )
        self.pending = Gauge(
            "esper_oona_consumer_group_pending",
            "Entries delivered to the group but not yet acknowledged.",
            ["stream", "group"],
            registry=registry,
        )


_default: BusMetrics | None = None


def default_metrics() -> BusMetrics:
    """The process-wide metrics on prometheus_client's default registry (created once)."""
    global _default
    if _default is None:
        _default = BusMetrics()
    return _default
