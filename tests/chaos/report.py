"""The chaos table: per fault kind, how often it was injected, which runs it hit and what they lost."""

from __future__ import annotations

from typing import Any

from .campaign import Campaign


def rows(campaign: Campaign) -> list[dict[str, Any]]:
    """One row per fault kind, in the order first injected."""
    assert campaign.verdict is not None
    checks = campaign.verdict.runs
    by_kind: dict[str, dict[str, Any]] = {}
    for fault in campaign.faults:
        kind = fault.kind.split(" ")[0] if fault.kind.startswith(("kill", "cut")) else fault.kind
        label = fault.kind if kind in ("kill", "cut") else kind
        row = by_kind.setdefault(label, {"fault": label, "injected": 0, "runs": set()})
        row["injected"] += 1
        row["runs"].update(fault.runs_affected)
    out = []
    for row in by_kind.values():
        losses = [f"{r}: {', '.join(checks[r].losses())}" for r in sorted(row["runs"]) if checks[r].losses()]
        out.append(
            {
                "fault": row["fault"],
                "injected": row["injected"],
                "runs_affected": len(row["runs"]),
                "lost": "; ".join(losses) if losses else "nothing",
            }
        )
    return out


def table(campaign: Campaign) -> str:
    """The rows as a fixed-width text table, followed by the outage answers and the summary."""
    assert campaign.verdict is not None
    lines = [f"{'fault':<16} {'injected':>8} {'runs affected':>13}  what was lost", "-" * 72]
    for row in rows(campaign):
        lines.append(f"{row['fault']:<16} {row['injected']:>8} {row['runs_affected']:>13}  {row['lost']}")
    lines.append("")
    crashes = ", ".join(f"{n} {c}" for n, c in campaign.crashes.items() if c) or "none"
    lines.append(f"services that exited on their own (not our SIGKILL): {crashes}")
    lines.append("API answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(campaign.answers.items())))
    lines.append("summary: " + ", ".join(f"{k}={v}" for k, v in campaign.verdict.summary.items()))
    return "\n".join(lines)
