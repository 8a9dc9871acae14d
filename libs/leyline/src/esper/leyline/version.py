"""The wire schema version and the rule for when two versions can talk.

Versions are ``MAJOR.MINOR``. A minor bump only adds optional fields, which
readers ignore when they do not know them, so any two versions with the same
major are compatible. A major bump changes or removes something a reader relies
on, so a consumer refuses a message from another major.
"""

from __future__ import annotations

SCHEMA_VERSION = "1.3"


def parse_version(version: str) -> tuple[int, int]:
    """Split ``"MAJOR.MINOR"`` into integers; raise ValueError naming the value."""
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"schema version {version!r} is not of the form MAJOR.MINOR")
    return int(parts[0]), int(parts[1])


def is_compatible(producer: str, consumer: str = SCHEMA_VERSION) -> bool:
    """Whether a consumer at ``consumer`` can read what a producer at ``producer`` wrote."""
    return parse_version(producer)[0] == parse_version(consumer)[0]
