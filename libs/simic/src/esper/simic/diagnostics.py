"""Per-update training diagnostics: a CSV row per update and a PNG of the curves.

The numbers that say whether a policy is learning (and the ways published
attempts failed quietly): explained variance of the critic (near zero: the
value head learned nothing), entropy (collapsing early: the policy stopped
exploring), approximate KL and clip fraction (too large: updates are
destroying the policy; zero: nothing changes).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CSV_NAME = "updates.csv"
PNG_NAME = "updates.png"


@dataclass(slots=True)
class UpdateStats:
    """One update's diagnostics (losses and KL are from the last minibatch; clipfrac is the mean)."""

    update: int
    global_step: int
    episodes: int
    mean_return: float
    learning_rate: float
    ent_coef: float
    clipfrac: float
    explained_variance: float
    epochs_run: int
    policy_loss: float = math.nan
    value_loss: float = math.nan
    entropy: float = math.nan
    old_approx_kl: float = math.nan
    approx_kl: float = math.nan
    grad_norm: float = math.nan
    sps: float = math.nan

    def line(self) -> str:
        """A short progress line."""
        return (
            f"ret {self.mean_return:.3g} ent {self.entropy:.3f} kl {self.approx_kl:.4f} "
            f"clip {self.clipfrac:.3f} ev {self.explained_variance:.3f}"
        )


FIELDS = tuple(f.name for f in fields(UpdateStats))


class UpdateLog:
    """Appends :class:`UpdateStats` rows to ``<dir>/updates.csv``; :meth:`plot` draws ``updates.png``.

    Opening a folder that already has a log continues it (a resumed run).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CSV_NAME
        if not self.path.exists():
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(FIELDS)

    def write(self, stats: UpdateStats) -> None:
        row = asdict(stats)
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row[name] for name in FIELDS])

    def rows(self) -> list[dict[str, float]]:
        with self.path.open(newline="") as handle:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def plot(self) -> Path | None:
        """Return, entropy, approximate KL, clip fraction, explained variance and losses per update."""
        rows = self.rows()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = (
            ("mean_return", "mean episode return"),
            ("entropy", "entropy"),
            ("approx_kl", "approx KL"),
            ("clipfrac", "clip fraction"),
            ("explained_variance", "explained variance"),
            ("value_loss", "value loss"),
        )
        fig, axes = plt.subplots(2, 3, figsize=(12, 6))
        steps = [r["global_step"] for r in rows]
        for ax, (key, title) in zip(axes.flat, panels, strict=True):
            ax.plot(steps, [r[key] for r in rows])
            ax.set_title(title)
            ax.set_xlabel("env steps")
        fig.tight_layout()
        out = self.directory / PNG_NAME
        fig.savefig(out, dpi=80)
        plt.close(fig)
        return out
