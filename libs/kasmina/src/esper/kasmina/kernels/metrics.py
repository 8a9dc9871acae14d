"""Prometheus metrics of kernel loading: cache hits and misses, load latency, fallbacks by kind."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

#: Load latency buckets, seconds (a warm load is well under a millisecond; a cold one fetches over HTTP).
LOAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class KernelMetrics:
    """The kernel loader's metrics in ``registry`` (the process-wide one by default)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.cache_hits = Counter(
            "esper_kasmina_kernel_cache_hits",
            "Germinations whose artifact came from the local cache",
            registry=registry,
        )
        self.cache_misses = Counter(
            "esper_kasmina_kernel_cache_misses", "Germinations that fetched their artifact from Urza", registry=registry
        )
        self.load_seconds = Histogram(
            "esper_kasmina_kernel_load_seconds",
            "Time to produce a seed from a kernel (fetch, verify, decode, copy)",
            ["cache"],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "esper_kasmina_kernel_fallbacks",
            "Germinations that built the blueprint eagerly because the kernel failed",
            ["failure"],
            registry=registry,
        )


_default: KernelMetrics | None = None


def default_metrics() -> KernelMetrics:
    """The process-wide metrics (registered once in the default registry)."""
    global _default
    if _default is None:
        _default = KernelMetrics()
    return _default
