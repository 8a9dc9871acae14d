"""The run narrative: what happened in a run, as lines a person can read.

::

    epoch 12: validation loss flat for 3 epochs (plateau 3); decided to germinate conv_light in s2 (confidence 0.60): …
    epoch 15: s2 (conv_light) TRAINING -> BLENDING: G2 passed [improvement=0.031]
    epoch 20: decision to cull s1 rejected by the safety monitor: embargo: ... (policy reason: ...; confidence 0.55)
    epoch 21: command 3f2a1b2c (germinate conv_light in s3) applied

Lines are appended to ``<root>/<run_id>/narrative.md`` (a Markdown list under
a title) as each message arrives, so the file is readable while the run goes
on. A decision line carries the context of its epoch's training signals when
they arrived first. Each entry is one line: newlines in reasons become spaces.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandResult,
    CommandStatus,
    DeadLetter,
    DecisionAction,
    Envelope,
    LayerHealth,
    Message,
    SeedStage,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
)
from esper.nissa.runs import run_directory

NARRATIVE_FILE = "narrative.md"
_BULLET = "- "
_SHORT_ID = 8
#: Layers with at least this fraction of dead units get a line.
DEAD_RATIO_WORTH_TELLING = 0.5
_MAX_RUNS = 256
_MAX_COMMANDS_PER_RUN = 1024
_SIGNAL_EPOCHS_KEPT = 4


@dataclass
class _RunStory:
    """What the narrative remembers about one run to phrase later lines."""

    last_epoch: int | None = None
    signals: OrderedDict[int, TrainingSignals] = field(default_factory=OrderedDict)
    commands: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def saw_epoch(self, epoch: int | None) -> None:
        if epoch is not None and (self.last_epoch is None or epoch > self.last_epoch):
            self.last_epoch = epoch


class NarrativeWriter:
    """Turns the messages of each run into narrative lines and appends them to the run's file.

    ``narrate_epochs`` adds a summary line per epoch; ``narrate_waits`` a line
    per WAIT decision; ``narrate_all_commands`` a line per command published
    (otherwise only operator-issued or override commands get one).
    """

    def __init__(
        self,
        root: Path,
        narrate_epochs: bool = False,
        narrate_waits: bool = False,
        narrate_all_commands: bool = False,
    ) -> None:
        self.root = Path(root)
        self.narrate_epochs = narrate_epochs
        self.narrate_waits = narrate_waits
        self.narrate_all_commands = narrate_all_commands
        self._stories: OrderedDict[str, _RunStory] = OrderedDict()

    def path(self, run_id: str) -> Path:
        return run_directory(self.root, run_id) / NARRATIVE_FILE

    def observe(self, envelope: Envelope[Message]) -> list[str]:
        """Narrate one message: returns the lines it produced (often none), already appended to the file."""
        story = self._story(envelope.run_id)
        lines = self._narrate(story, envelope.payload)
        if lines:
            self._append(envelope.run_id, lines)
        return lines

    def lines(self, run_id: str) -> list[str]:
        """Every narrative line written for ``run_id`` so far, oldest first."""
        path = self.path(run_id)
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        return [line[len(_BULLET) :] for line in text.splitlines() if line.startswith(_BULLET)]

    # -- phrasing ---------------------------------------------------------------------------

    def _narrate(self, story: _RunStory, message: Message) -> list[str]:
        match message:
            case TrainingSignals():
                return self._signals(story, message)
            case AdaptationDecision():
                return self._decision(story, message)
            case SeedTransition():
                story.saw_epoch(message.epoch)
                return [self._transition(message)]
            case AdaptationCommand():
                return self._command(story, message)
            case CommandResult():
                return [self._result(story, message)]
            case TelemetryEvent():
                story.saw_epoch(message.epoch)
                text = message.message or _attributes(message.attributes) or "(no details)"
                return [f"{_when(message.epoch, story)}: {message.kind}: {text}"]
            case LayerHealth():
                story.saw_epoch(message.epoch)
                return self._health(message)
            case DeadLetter():
                return [
                    f"{_when(None, story)}: dead letter on {message.stream} (entry {message.entry_id}, "
                    f"{message.deliveries} deliveries to {message.group}/{message.consumer}): "
                    f"{message.error_type}: {message.error}"
                ]
        return []

    def _signals(self, story: _RunStory, signals: TrainingSignals) -> list[str]:
        story.saw_epoch(signals.epoch)
        story.signals[signals.epoch] = signals
        story.signals.move_to_end(signals.epoch)
        while len(story.signals) > _SIGNAL_EPOCHS_KEPT:
            story.signals.popitem(last=False)
        lines = []
        bad = [
            f"{name} {value}"
            for name, value in (("train loss", signals.train_loss), ("val loss", signals.val_loss))
            if not math.isfinite(value)
        ]
        if bad:
            lines.append(f"epoch {signals.epoch}: loss is not finite ({', '.join(bad)})")
        if self.narrate_epochs:
            active = sum(1 for s in signals.seeds if s.stage not in (SeedStage.DORMANT, SeedStage.FOSSILIZED))
            lines.append(
                f"epoch {signals.epoch}: train loss {signals.train_loss:.4f}, val loss {signals.val_loss:.4f}, "
                f"val accuracy {signals.val_accuracy:.3f} ({signals.accuracy_delta:+.3f}), "
                f"plateau {signals.plateau_epochs}, {signals.params_total:,} params, "
                f"{active} active seed{'' if active == 1 else 's'}"
            )
        return lines

    def _decision(self, story: _RunStory, decision: AdaptationDecision) -> list[str]:
        story.saw_epoch(decision.epoch)
        if decision.accepted and decision.action is DecisionAction.WAIT and not self.narrate_waits:
            return []
        head = f"epoch {decision.epoch}: "
        signals = story.signals.get(decision.epoch)
        if signals is not None:
            head += _context(signals) + "; "
        what = _decision_phrase(decision)
        if not decision.accepted:
            rejection = decision.rejection_reason or "no reason given"
            return [
                f"{head}decision to {what} rejected by the safety monitor: {rejection} "
                f"(policy reason: {decision.reason}; confidence {decision.confidence:.2f})"
            ]
        if decision.action is DecisionAction.WAIT:
            return [f"{head}waiting (confidence {decision.confidence:.2f}): {decision.reason}"]
        return [f"{head}decided to {what} (confidence {decision.confidence:.2f}): {decision.reason}"]

    def _transition(self, transition: SeedTransition) -> str:
        slot = transition.slot_id + (f" ({transition.blueprint})" if transition.blueprint else "")
        measured = f" [{_attributes(transition.metrics)}]" if transition.metrics else ""
        return (
            f"epoch {transition.epoch}: {slot} {SeedStage(transition.from_stage).name} -> "
            f"{SeedStage(transition.to_stage).name}: {transition.reason}{measured}"
        )

    def _command(self, story: _RunStory, command: AdaptationCommand) -> list[str]:
        what = _command_phrase(command.action.value, command.slot_id, command.blueprint, command.alpha)
        story.commands[command.command_id] = what
        while len(story.commands) > _MAX_COMMANDS_PER_RUN:
            story.commands.popitem(last=False)
        story.saw_epoch(command.epoch)
        by_operator = command.issued_by != "policy" or command.override
        if not (by_operator or self.narrate_all_commands):
            return []
        override = " overriding the safety monitor" if command.override else ""
        reason = f": {command.reason}" if command.reason else ""
        return [
            f"{_when(command.epoch, story)}: command {_short(command.command_id)} ({what}) issued by "
            f"{command.issued_by}{override}{reason}"
        ]

    def _result(self, story: _RunStory, result: CommandResult) -> str:
        story.saw_epoch(result.epoch)
        what = story.commands.pop(result.command_id, None) or _command_phrase(result.action.value, result.slot_id)
        head = f"{_when(result.epoch, story)}: command {_short(result.command_id)} ({what})"
        reason = f": {result.reason}" if result.reason else ""
        if result.status is CommandStatus.APPLIED:
            return f"{head} applied{reason}"
        if result.status is CommandStatus.REJECTED:
            return f"{head} rejected by the trainer{reason or ': no reason given'}"
        return f"{head} ignored as a duplicate{reason}"

    def _health(self, health: LayerHealth) -> list[str]:
        notes = []
        for layer in health.layers:
            if layer.dead_ratio >= DEAD_RATIO_WORTH_TELLING:
                notes.append(f"{layer.layer} {layer.dead_ratio:.0%} dead units")
            if layer.error_count:
                notes.append(f"{layer.layer} {layer.error_count} errors")
        return [f"epoch {health.epoch}: layer health: {'; '.join(notes)}"] if notes else []

    # -- storage ----------------------------------------------------------------------------

    def _story(self, run_id: str) -> _RunStory:
        story = self._stories.get(run_id)
        if story is None:
            story = self._stories[run_id] = _RunStory()
            while len(self._stories) > _MAX_RUNS:
                self._stories.popitem(last=False)
        else:
            self._stories.move_to_end(run_id)
        return story

    def _append(self, run_id: str, lines: list[str]) -> None:
        path = run_directory(self.root, run_id, create=True) / NARRATIVE_FILE
        body = "".join(f"{_BULLET}{_one_line(line)}\n" for line in lines).encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            body = f"# Run {run_id}\n\n".encode() + body
        except FileExistsError:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)


def _when(epoch: int | None, story: _RunStory) -> str:
    """``epoch N`` from the message, else the run's latest epoch, else ``before epoch 0``."""
    if epoch is None:
        epoch = story.last_epoch
    return f"epoch {epoch}" if epoch is not None else "before the first epoch"


def _context(signals: TrainingSignals) -> str:
    if signals.plateau_epochs:
        plural = "s" if signals.plateau_epochs != 1 else ""
        return f"validation loss flat for {signals.plateau_epochs} epoch{plural} (plateau {signals.plateau_epochs})"
    return f"validation loss {signals.val_loss:.4f}, accuracy {signals.val_accuracy:.3f}"


def _decision_phrase(decision: AdaptationDecision) -> str:
    if decision.action is DecisionAction.WAIT:
        return "wait"
    return _command_phrase(decision.action.value, decision.slot_id, decision.blueprint)


def _command_phrase(action: str, slot_id: str | None, blueprint: str | None = None, alpha: float | None = None) -> str:
    words = [action]
    if blueprint:
        words.append(blueprint)
    if slot_id:
        words.append(f"in {slot_id}" if blueprint else slot_id)
    if alpha is not None:
        words.append(f"to alpha {alpha:.2f}")
    return " ".join(words)


def _attributes(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _short(command_id: str) -> str:
    return command_id[:_SHORT_ID]


def _one_line(text: str) -> str:
    return " ".join(text.split())
