"""Nissa: the telemetry sink.

Feed :class:`Nissa` every decoded envelope; it exports Prometheus metrics per
run (:class:`NissaMetrics`), archives events per run as JSONL
(:class:`RunArchive`) and writes a readable narrative per run
(:class:`NarrativeWriter`), as much as the diagnostic profile
(``minimal``/``standard``/``research``) asks. The bus wiring and HTTP server
live in the service's main, not here.
"""

from esper.nissa.archive import ArchivedEvent, ArchiveFormatError, RunArchive
from esper.nissa.metrics import NissaMetrics
from esper.nissa.narrative import NarrativeWriter
from esper.nissa.profiles import MINIMAL, PROFILES, RESEARCH, STANDARD, DiagnosticProfile, get_profile
from esper.nissa.reasons import ReasonCategories
from esper.nissa.runs import InvalidRunIdError, check_run_id, run_directory
from esper.nissa.sink import Nissa

__all__ = [
    "MINIMAL",
    "PROFILES",
    "RESEARCH",
    "STANDARD",
    "ArchiveFormatError",
    "ArchivedEvent",
    "DiagnosticProfile",
    "InvalidRunIdError",
    "NarrativeWriter",
    "Nissa",
    "NissaMetrics",
    "ReasonCategories",
    "RunArchive",
    "check_run_id",
    "get_profile",
    "run_directory",
]
