"""Compiled kernels for seeds: artifacts, a verified local cache, Urza as their source, and loading with fallback.

:class:`KernelLoader` is the entry point: ``loader.seed(blueprint, config,
shape, layout)`` returns a :class:`SeedBuild` whose module germination uses,
from a compiled kernel when one loads, built eagerly otherwise.
"""

from esper.kasmina.kernels.artifact import CorruptArtifact, compile_seed, fresh_copy, load_artifact
from esper.kasmina.kernels.cache import KernelCache, KernelRecord
from esper.kasmina.kernels.loader import KernelLoader, KernelLoadError, SeedBuild, dtype_name
from esper.kasmina.kernels.metrics import KernelMetrics, default_metrics
from esper.kasmina.kernels.source import (
    KernelNotFound,
    KernelNotValidated,
    KernelSource,
    SourceUnavailable,
    UrzaSource,
)

__all__ = [
    "CorruptArtifact",
    "KernelCache",
    "KernelLoadError",
    "KernelLoader",
    "KernelMetrics",
    "KernelNotFound",
    "KernelNotValidated",
    "KernelRecord",
    "KernelSource",
    "SeedBuild",
    "SourceUnavailable",
    "UrzaSource",
    "compile_seed",
    "default_metrics",
    "dtype_name",
    "fresh_copy",
    "load_artifact",
]
