"""Compiled kernels for seeds: artifacts, a verified local cache, Urza as their source, and loading with fallback.

:class:`KernelLoader` is the entry point: ``loader.seed(blueprint, config,
shape, layout)`` returns a :class:`SeedBuild` whose module germination uses,
from a compiled kernel when one loads, built eagerly otherwise;
:func:`process_loader` is the process's loader configured from the environment
(``ESPER_URZA_URL``, ``ESPER_KERNEL_CACHE``).
"""

from esper.kasmina.kernels.artifact import CorruptArtifact, compile_seed, fresh_copy, load_artifact
from esper.kasmina.kernels.cache import KernelCache, KernelRecord
from esper.kasmina.kernels.env import FROM_ENV, KernelSettings, kernel_settings, process_loader
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
    "FROM_ENV",
    "CorruptArtifact",
    "KernelCache",
    "KernelLoadError",
    "KernelLoader",
    "KernelMetrics",
    "KernelNotFound",
    "KernelNotValidated",
    "KernelRecord",
    "KernelSettings",
    "KernelSource",
    "SeedBuild",
    "SourceUnavailable",
    "UrzaSource",
    "compile_seed",
    "default_metrics",
    "dtype_name",
    "fresh_copy",
    "kernel_settings",
    "load_artifact",
    "process_loader",
]
