"""What the event loop hands a running job's training thread: commands and Tamiyo's decisions.

A command handler (event loop) puts a :class:`PendingCommand` and waits for it
to be settled; the training thread takes every queued command at the next
boundary, applies them, checkpoints, publishes the results, and only then
settles them, so the bus acknowledges a command only once its effect is in
the checkpoint and its result on the bus. The thread also waits here: for commands while the run is
paused, for a decision (and the command it names) in lockstep.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from esper.leyline import AdaptationCommand, AdaptationDecision

#: How long the queued commands must stay unchanged before a lockstep wait for another one gives up (see
#: :meth:`CommandInbox.wait_for_command`): the commands of one read batch are queued within this of each other.
HELD_BACK_AFTER_S = 0.25


class RunInterrupted(Exception):
    """The service is stopping: the run stays resumable from its checkpoint, and what it was handed is not acked."""


#: Called from the training thread: None when the command is done with, else the error its handler re-raises.
Settle = Callable[[BaseException | None], None]


@dataclass(frozen=True, slots=True)
class PendingCommand:
    command: AdaptationCommand
    settle: Settle


def future_settler(future: asyncio.Future[None]) -> Settle:
    """A :data:`Settle` that completes ``future`` on its own loop, from any thread."""
    loop = future.get_loop()

    def resolve(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def settle(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(resolve, error)

    return settle


class CommandInbox:
    """Thread-safe hand-over between one run's bus handlers and its training thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._commands: list[PendingCommand] = []
        self._last_put = 0.0
        #: commands applied from their decisions at a checkpointed boundary (their own copies came late)
        self._from_decisions: set[str] = set()
        self._decisions: dict[int, dict[int, AdaptationDecision]] = {}
        self._interrupted = False
        self._fenced = False
        self._closed = False

    # -- event loop side --------------------------------------------------------
    def put_command(self, pending: PendingCommand) -> bool:
        """Queue a command for the next boundary; False when the run is over (closed)."""
        with self._cond:
            if self._closed:
                return False
            self._commands.append(pending)
            self._last_put = time.monotonic()
            self._cond.notify_all()
            return True

    def applied_from_decision(self, command_id: str) -> bool:
        """Whether ``command_id`` was applied from its decision at a boundary already checkpointed: its late
        copy is answered DUPLICATE at once rather than held (with its read batch) until the next boundary."""
        with self._cond:
            return command_id in self._from_decisions

    def put_decision(self, decision: AdaptationDecision) -> None:
        """Remember one of Tamiyo's decisions on ``decision.epoch`` (lockstep waits for all ``count``)."""
        with self._cond:
            self._decisions.setdefault(decision.epoch, {})[decision.index] = decision
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Wake the training thread: it checkpoints at its next boundary and raises :class:`RunInterrupted`."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def fence(self) -> None:
        """The run's lease was lost (another replica owns it now): like :meth:`interrupt`, but the thread must
        not apply, checkpoint or publish anything more - the new owner resumes from the last checkpoint."""
        with self._cond:
            self._fenced = True
            self._interrupted = True
            self._cond.notify_all()

    def close(self) -> list[PendingCommand]:
        """Refuse further commands; returns the ones still queued (the run ended before their boundary)."""
        with self._cond:
            self._closed = True
            left, self._commands = self._commands, []
            return left

    def fail_all(self, error: BaseException) -> None:
        """Settle every queued command with ``error`` (their handlers raise: they stay pending on the bus)."""
        with self._cond:
            left, self._commands = self._commands, []
        for pending in left:
            pending.settle(error)

    # -- training thread side -----------------------------------------------------
    @property
    def interrupted(self) -> bool:
        with self._cond:
            return self._interrupted

    @property
    def fenced(self) -> bool:
        with self._cond:
            return self._fenced

    def note_applied_from_decisions(self, command_ids: list[str]) -> None:
        """Called once the boundary that applied ``command_ids`` from their decisions is checkpointed."""
        with self._cond:
            self._from_decisions.update(command_ids)

    def take_commands(self) -> list[PendingCommand]:
        """Every queued command, oldest first."""
        with self._cond:
            taken, self._commands = self._commands, []
            return taken

    def wait_for_command(
        self, timeout_s: float | None = None, command_id: str | None = None, *, held_back_after_s: float | None = None
    ) -> bool:
        """Block until a command (``command_id`` when given) is queued; False on timeout or interrupt.

        With ``held_back_after_s``, also False once other commands are queued and none has been for that
        long: each queued command's handler holds its read batch until the boundary settles it, so a command
        behind them on the bus cannot arrive before this boundary (the caller applies it from its decision).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                if command_id is None and self._commands:
                    return True
                if command_id is not None and any(p.command.command_id == command_id for p in self._commands):
                    return True
                if self._interrupted:
                    return False
                now = time.monotonic()
                wake = deadline
                if held_back_after_s is not None and self._commands:
                    held_back_at = self._last_put + held_back_after_s
                    if now >= held_back_at:
                        return False
                    wake = held_back_at if wake is None else min(wake, held_back_at)
                if deadline is not None and now >= deadline:
                    return False
                self._cond.wait(None if wake is None else wake - now)

    def wait_for_decisions(self, epoch: int, timeout_s: float) -> list[AdaptationDecision] | None:
        """Tamiyo's decisions on ``epoch`` in index order once all ``count`` are here (None on timeout or
        interrupt); those of this and older epochs are dropped."""

        def ready() -> bool:
            held = self._decisions.get(epoch)
            return bool(held) and all(i in held for i in range(next(iter(held.values())).count))

        if not self._wait(ready, timeout_s):
            return None
        with self._cond:
            held = self._decisions[epoch]
            for old in [e for e in self._decisions if e <= epoch]:
                del self._decisions[old]
            return [held[i] for i in sorted(held)]

    def _wait(self, ready: Callable[[], bool], timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not ready():
                if self._interrupted:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True
