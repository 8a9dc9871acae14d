"""Free-text rejection reasons folded into a short, bounded set of metric label values.

A Prometheus label value that carries free text (slot ids, numbers) makes a new
time series per message. Reasons are folded to a category:

1. a reason written as ``"category: details"`` with a short category (the
   convention producers are asked to follow) gives ``category`` as a slug;
2. otherwise the first keyword found from :data:`KEYWORDS` gives its category;
3. otherwise ``other``.

At most ``max_categories`` distinct values are handed out per instance; later
new ones become ``other``, so a misbehaving producer cannot grow the series.
"""

from __future__ import annotations

import re

OTHER = "other"
UNSPECIFIED = "unspecified"

#: keyword (lowercase substring) -> category, first match wins.
KEYWORDS: tuple[tuple[str, str], ...] = (
    ("embargo", "embargo"),
    ("cooldown", "cooldown"),
    ("illegal", "illegal_transition"),
    ("transition", "illegal_transition"),
    ("budget", "budget"),
    ("max seeds", "budget"),
    ("too many", "budget"),
    ("param", "budget"),
    ("confidence", "low_confidence"),
    ("nan", "unstable"),
    ("unstable", "unstable"),
    ("diverg", "unstable"),
    ("rollback", "unstable"),
    ("gate", "gate_failed"),
    ("occupied", "slot_busy"),
    ("busy", "slot_busy"),
    ("unknown slot", "unknown_slot"),
    ("no such slot", "unknown_slot"),
    ("veto", "operator_veto"),
    ("operator", "operator_veto"),
    ("paused", "paused"),
)

_PREFIX = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _-]{0,31})\s*:")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


class ReasonCategories:
    """Maps rejection reasons to at most ``max_categories`` label values (plus ``other``)."""

    def __init__(self, max_categories: int = 24) -> None:
        if max_categories < 1:
            raise ValueError(f"field 'max_categories': must be at least 1 (value {max_categories!r})")
        self.max_categories = max_categories
        self._seen: set[str] = set()

    def categorize(self, reason: str | None) -> str:
        """The category label of ``reason`` (``unspecified`` when empty)."""
        if reason is None or not reason.strip():
            return UNSPECIFIED
        category = _category(reason)
        if category in self._seen:
            return category
        if len(self._seen) >= self.max_categories:
            return OTHER
        self._seen.add(category)
        return category


def _category(reason: str) -> str:
    prefix = _PREFIX.match(reason)
    if prefix:
        slug = _NOT_SLUG.sub("_", prefix.group(1).lower()).strip("_")
        if slug:
            return slug
    lowered = reason.lower()
    for keyword, category in KEYWORDS:
        if keyword in lowered:
            return category
    return OTHER
