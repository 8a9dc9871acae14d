"""Urza's Prometheus metrics (its own registry, served first in ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class UrzaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.blob_uploads = Counter("esper_urza_blob_uploads", "Artifact blobs stored", registry=self.registry)
        self.blob_upload_bytes = Counter(
            "esper_urza_blob_upload_bytes", "Bytes of artifact blobs stored", registry=self.registry
        )
        self.checksum_failures = Counter(
            "esper_urza_blob_checksum_failures",
            "Blobs refused on upload or withdrawn on read because their bytes did not hash to their name",
            ["where"],
            registry=self.registry,
        )
        self.kernels_registered = Counter(
            "esper_urza_kernels_registered", "Kernels registered (new ones only)", registry=self.registry
        )
        self.kernel_reports = Counter(
            "esper_urza_kernel_reports", "Compilation reports accepted, by status", ["status"], registry=self.registry
        )
