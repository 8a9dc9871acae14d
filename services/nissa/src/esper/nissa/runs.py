"""Where a run's files live: ``<root>/<run_id>/``, with the run id checked first.

Run ids arrive from the bus, so they are untrusted: one containing a path
separator or ``..`` could write outside the root.
"""

from __future__ import annotations

from pathlib import Path

_FORBIDDEN = ("/", "\\", "\x00")
_MAX_LENGTH = 200


class InvalidRunIdError(ValueError):
    """A run id that cannot safely name a directory."""

    def __init__(self, run_id: object, problem: str) -> None:
        self.run_id = run_id
        super().__init__(f"field 'run_id': {problem} (value {run_id!r})")


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` unchanged if it is a safe single directory name; raise :class:`InvalidRunIdError`."""
    if not isinstance(run_id, str):
        raise InvalidRunIdError(run_id, "must be a string")
    if not run_id or run_id.strip() != run_id:
        raise InvalidRunIdError(run_id, "must be non-empty without leading or trailing spaces")
    if any(c in run_id for c in _FORBIDDEN):
        raise InvalidRunIdError(run_id, "must not contain a path separator or NUL")
    if run_id.startswith(".") or ".." in run_id:
        raise InvalidRunIdError(run_id, "must not start with '.' or contain '..'")
    if len(run_id) > _MAX_LENGTH:
        raise InvalidRunIdError(run_id, f"longer than {_MAX_LENGTH} characters")
    if not run_id.isprintable():
        raise InvalidRunIdError(run_id, "must be printable")
    return run_id


def run_directory(root: Path, run_id: str, create: bool = False) -> Path:
    """``root / run_id`` after :func:`check_run_id`; made (with parents) when ``create``."""
    path = Path(root) / check_run_id(run_id)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
