"""SignalTracker: deltas, plateau and best values of a run, computed once.

The producer of a run's :class:`TrainingSignals` (Tolaria's trainer) calls
:meth:`SignalTracker.update` with each epoch's raw numbers and publishes the
derived signals (deltas, plateau count, best values). A policy's tracker
reads them back with :meth:`SignalTracker.observe`, which takes the plateau,
deltas and best values exactly as published, so the plateau a policy acts on
is the one every other reader (Nissa's narrative, the status API) sees. It
also keeps short histories for the observation vector learned policies read.

Non-finite inputs are replaced by the last good value (or a neutral default)
and flagged, so a NaN never reaches a comparison: ``nan < best`` is silently
False, which would hide a plateau.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esper.leyline import (
    ACTIVE_STAGES,
    OBSERVATION_SIZE,
    GlobalFeatures,
    SeedStage,
    SeedStateReport,
    SlotFeatures,
    TrainingSignals,
    write_observation,
)
from esper.leyline.observation import HISTORY_LENGTH, OBSERVATION_SLOTS

#: An epoch improves when validation accuracy rises, or validation loss falls, by more than this.
PLATEAU_MIN_DELTA = 0.005


@dataclass(frozen=True, slots=True)
class TrackedEpoch:
    """The derived signals of one epoch, after sanitizing."""

    epoch: int
    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    loss_delta: float
    accuracy_delta: float
    plateau_epochs: int
    best_val_loss: float
    best_val_accuracy: float
    improved: bool
    sanitized: tuple[str, ...] = ()

    def signals(
        self,
        *,
        step: int,
        params_total: int,
        seeds: list[SeedStateReport],
        learning_rate: float | None = None,
        epoch_seconds: float = 0.0,
        paused: bool = False,
    ) -> TrainingSignals:
        """This epoch as the :class:`TrainingSignals` its producer publishes (the derived numbers as tracked)."""
        return TrainingSignals(
            epoch=self.epoch,
            step=step,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            train_accuracy=self.train_accuracy,
            val_accuracy=self.val_accuracy,
            loss_delta=self.loss_delta,
            accuracy_delta=self.accuracy_delta,
            plateau_epochs=self.plateau_epochs,
            best_val_loss=self.best_val_loss,
            best_val_accuracy=self.best_val_accuracy,
            learning_rate=learning_rate,
            params_total=params_total,
            epoch_seconds=epoch_seconds,
            seeds=seeds,
            paused=paused,
        )


@dataclass(slots=True)
class _SlotHistory:
    contributions: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))
    seed_id: str | None = None


class SignalTracker:
    """Deltas, plateau count, best values and short histories of one run.

    An epoch *improves* when validation accuracy beats the best so far by more
    than ``min_delta`` or validation loss drops below the best by more than
    ``min_delta``; ``plateau_epochs`` counts epochs since the last improvement.
    """

    def __init__(self, *, min_delta: float = PLATEAU_MIN_DELTA, history: int = HISTORY_LENGTH) -> None:
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"field 'min_delta': must be a finite number >= 0 (value {min_delta!r})")
        if history < 1:
            raise ValueError(f"field 'history': must be >= 1 (value {history!r})")
        self.min_delta = min_delta
        self.history = history
        self.val_losses: deque[float] = deque(maxlen=history)
        self.val_accuracies: deque[float] = deque(maxlen=history)
        self.best_val_loss = math.inf
        self.best_val_accuracy = 0.0
        self.plateau_epochs = 0
        self.epochs_seen = 0
        self.sanitized_total = 0
        self.last: TrackedEpoch | None = None
        self._slots: dict[str, _SlotHistory] = {}

    def _clean(self, name: str, value: float, fallback: float, flags: list[str]) -> float:
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
        flags.append(name)
        return fallback

    def update(
        self, *, epoch: int, train_loss: float, val_loss: float, train_accuracy: float, val_accuracy: float
    ) -> TrackedEpoch:
        """Record one epoch's raw numbers and return the derived signals.

        A non-finite loss is replaced by the previous value (or the worst seen), an
        accuracy by the previous value (or 0); the names of replaced fields are
        in ``TrackedEpoch.sanitized`` and such an epoch never counts as an improvement.
        """
        flags: list[str] = []
        prev = self.last
        loss_fallback = prev.val_loss if prev else 0.0
        train_loss = self._clean("train_loss", train_loss, prev.train_loss if prev else 0.0, flags)
        val_loss = self._clean("val_loss", val_loss, loss_fallback, flags)
        train_accuracy = self._clean("train_accuracy", train_accuracy, prev.train_accuracy if prev else 0.0, flags)
        val_accuracy = self._clean("val_accuracy", val_accuracy, prev.val_accuracy if prev else 0.0, flags)

        improved = False
        if not flags:
            if val_accuracy > self.best_val_accuracy + self.min_delta:
                improved = True
            if val_loss < self.best_val_loss - self.min_delta:
                improved = True
            self.best_val_accuracy = max(self.best_val_accuracy, val_accuracy)
            self.best_val_loss = min(self.best_val_loss, val_loss)
        self.plateau_epochs = 0 if improved else self.plateau_epochs + 1
        self.sanitized_total += bool(flags)

        tracked = TrackedEpoch(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            train_accuracy=train_accuracy,
            val_accuracy=val_accuracy,
            loss_delta=val_loss - prev.val_loss if prev else 0.0,
            accuracy_delta=val_accuracy - prev.val_accuracy if prev else 0.0,
            plateau_epochs=self.plateau_epochs,
            best_val_loss=self.best_val_loss if math.isfinite(self.best_val_loss) else val_loss,
            best_val_accuracy=self.best_val_accuracy,
            improved=improved,
            sanitized=tuple(flags),
        )
        self.val_losses.append(val_loss)
        self.val_accuracies.append(val_accuracy)
        self.epochs_seen += 1
        self.last = tracked
        return tracked

    def observe(self, signals: TrainingSignals) -> TrackedEpoch:
        """Take one epoch as its producer published it (Tamiyo's side of the bus).

        Plateau count, deltas and best values are the message's; only non-finite
        numbers are replaced (and flagged), as :meth:`update` does.
        """
        flags: list[str] = []
        prev = self.last
        train_loss = self._clean("train_loss", signals.train_loss, prev.train_loss if prev else 0.0, flags)
        val_loss = self._clean("val_loss", signals.val_loss, prev.val_loss if prev else 0.0, flags)
        train_accuracy = self._clean(
            "train_accuracy", signals.train_accuracy, prev.train_accuracy if prev else 0.0, flags
        )
        val_accuracy = self._clean("val_accuracy", signals.val_accuracy, prev.val_accuracy if prev else 0.0, flags)
        best_loss = signals.best_val_loss
        best_accuracy = signals.best_val_accuracy
        self.best_val_loss = float(best_loss) if best_loss is not None and math.isfinite(best_loss) else val_loss
        if best_accuracy is not None and math.isfinite(best_accuracy):
            self.best_val_accuracy = float(best_accuracy)
        self.plateau_epochs = signals.plateau_epochs
        self.sanitized_total += bool(flags)
        tracked = TrackedEpoch(
            epoch=signals.epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            train_accuracy=train_accuracy,
            val_accuracy=val_accuracy,
            loss_delta=_finite(signals.loss_delta),
            accuracy_delta=_finite(signals.accuracy_delta),
            plateau_epochs=signals.plateau_epochs,
            best_val_loss=self.best_val_loss,
            best_val_accuracy=self.best_val_accuracy,
            improved=signals.plateau_epochs == 0 and not flags,
            sanitized=tuple(flags),
        )
        self.val_losses.append(val_loss)
        self.val_accuracies.append(val_accuracy)
        self.epochs_seen += 1
        self.last = tracked
        for report in signals.seeds:
            slot = self._slots.setdefault(report.slot_id, _SlotHistory())
            if report.seed_id != slot.seed_id:
                slot.contributions.clear()
                slot.seed_id = report.seed_id
            value = report.contribution
            if report.stage in ACTIVE_STAGES and value is not None and math.isfinite(value):
                slot.contributions.append(float(value))
        return tracked

    def contributions(self, slot_id: str) -> tuple[float, ...]:
        """The recent finite contributions measured for the seed now in ``slot_id`` (oldest first)."""
        slot = self._slots.get(slot_id)
        return tuple(slot.contributions) if slot else ()

    def observation(
        self, signals: TrainingSignals, *, epoch_progress: float, params_initial: int, out: Any = None
    ) -> np.ndarray:
        """The feature vector (``esper.leyline.observation`` layout) for ``signals``.

        Call after :meth:`observe` for the same signals. ``params_initial`` is the
        host's size at the start; parameter counts are written as ratios to it.
        Returns ``out`` (or a new float32 array of ``OBSERVATION_SIZE``).
        """
        if self.last is None or self.last.epoch != signals.epoch:
            raise ValueError(f"field 'signals.epoch': observe epoch {signals.epoch} before building its observation")
        base = max(params_initial, 1)
        t = self.last
        slots = [
            SlotFeatures(
                stage=SeedStage(r.stage),
                alpha=_finite(r.alpha),
                epochs_in_stage=float(r.epochs_in_stage),
                improvement=_finite(r.improvement),
                contribution=_finite(r.contribution),
                params_ratio=r.params / base,
                embargo_epochs_left=float(r.embargo_epochs_left),
            )
            for r in signals.seeds[:OBSERVATION_SLOTS]
        ]
        features = GlobalFeatures(
            epoch_progress=epoch_progress,
            train_loss=t.train_loss,
            val_loss=t.val_loss,
            train_accuracy=t.train_accuracy,
            val_accuracy=t.val_accuracy,
            loss_delta=t.loss_delta,
            accuracy_delta=t.accuracy_delta,
            plateau_epochs=float(t.plateau_epochs),
            best_val_accuracy=t.best_val_accuracy,
            params_ratio=signals.params_total / base,
            active_seeds=float(sum(1 for r in signals.seeds if r.stage in ACTIVE_STAGES)),
            signals_sanitized=float(bool(t.sanitized)),
        )
        buffer = np.zeros(OBSERVATION_SIZE, dtype=np.float32) if out is None else out
        write_observation(buffer, features, self.val_losses, self.val_accuracies, slots)
        return buffer

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints."""
        return {
            "min_delta": self.min_delta,
            "history": self.history,
            "val_losses": list(self.val_losses),
            "val_accuracies": list(self.val_accuracies),
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "best_val_accuracy": self.best_val_accuracy,
            "plateau_epochs": self.plateau_epochs,
            "epochs_seen": self.epochs_seen,
            "sanitized_total": self.sanitized_total,
            "last": None if self.last is None else _tracked_to_dict(self.last),
            "slots": {
                k: {"seed_id": v.seed_id, "contributions": list(v.contributions)} for k, v in self._slots.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(min_delta=state["min_delta"], history=state["history"])  # type: ignore[misc]
        self.val_losses.extend(state["val_losses"])
        self.val_accuracies.extend(state["val_accuracies"])
        best = state["best_val_loss"]
        self.best_val_loss = math.inf if best is None else best
        self.best_val_accuracy = state["best_val_accuracy"]
        self.plateau_epochs = state["plateau_epochs"]
        self.epochs_seen = state["epochs_seen"]
        self.sanitized_total = state["sanitized_total"]
        last = state["last"]
        self.last = None if last is None else TrackedEpoch(**{**last, "sanitized": tuple(last["sanitized"])})
        for slot_id, slot in state["slots"].items():
            history = _SlotHistory(seed_id=slot["seed_id"])
            history.contributions.extend(slot["contributions"])
            self._slots[slot_id] = history


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else 0.0


def _tracked_to_dict(t: TrackedEpoch) -> dict[str, Any]:
    return {name: getattr(t, name) for name in TrackedEpoch.__slots__}
