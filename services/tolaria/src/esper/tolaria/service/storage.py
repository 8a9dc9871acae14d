"""Where a run's checkpoint, events and report live, so that any replica can resume any run.

A replica that takes over a dead replica's run must find that run's last
checkpoint. :class:`RunStorage` is the small interface the service needs:
:meth:`~RunStorage.checkout` gives a local folder holding the run's latest
stored files before the run is built or resumed, :meth:`~RunStorage.commit`
stores the folder after each checkpoint and after the report. The default,
:class:`SharedDirectory`, is a runs directory every replica mounts (a shared
volume, NFS): the folder is the store and commit has nothing to copy. An
object store implements the same two calls by downloading the run's prefix
into a scratch folder and uploading what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class RunStorage(Protocol):
    """Durable storage of run folders that every replica can reach."""

    def checkout(self, run_id: str) -> Path:
        """A local folder with ``run_id``'s latest stored files (empty for a new run)."""

    def commit(self, run_id: str, folder: Path) -> None:
        """Store ``folder`` as ``run_id``'s latest state; return once it is durable."""


class SharedDirectory:
    """Run folders under ``root`` on a file system every replica mounts: ``root/<run_id>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def checkout(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"field 'run_id': not usable as a folder name: {run_id!r}")
        return self.root / run_id

    def commit(self, run_id: str, folder: Path) -> None:
        # The checkpoint writer already replaced its file atomically in the shared folder.
        return None
