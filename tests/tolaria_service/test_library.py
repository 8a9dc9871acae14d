"""The trainer-library pieces the service stands on, without Redis: a trainer with no in-process policy,
commands at a boundary, jobs stored in checkpoints, the inbox hand-over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DecisionAction,
    Message,
    SeedStage,
    TrainingJob,
)
from esper.tolaria.runs import RunFolder, build_trainer, job_from_dict
from esper.tolaria.service.inbox import CommandInbox, PendingCommand
from esper.tolaria.service.outbox import stream_for

TINY = TrainingJob(epochs=3, max_train_samples=400)


def germinate(command_id: str) -> AdaptationCommand:
    return AdaptationCommand(
        command_id=command_id, action=CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light"
    )


def test_a_trainer_without_a_policy_publishes_no_decisions_and_applies_what_the_boundary_hook_returns() -> None:
    published: list[Message] = []
    trainer = build_trainer(TINY, sinks=(published.append,), decide_in_process=False)
    assert trainer.policy is None
    seen: list[int] = []

    def at_boundary(signals):
        seen.append(signals.epoch)
        return [germinate("c1")] if signals.epoch == 2 else []

    for _ in range(3):
        trainer.run_epoch(at_boundary=at_boundary)
    assert seen == [1, 2, 3]
    assert not any(isinstance(m, AdaptationDecision) for m in published)
    (result,) = [m for m in published if isinstance(m, CommandResult)]
    assert (result.status, result.epoch) == (CommandStatus.APPLIED, 2)
    assert trainer.decisions == []


def test_commands_applied_between_epochs_carry_the_last_epoch_and_are_never_applied_twice() -> None:
    trainer = build_trainer(TINY, decide_in_process=False)
    trainer.run_epoch()
    first, again = trainer.apply_commands([germinate("c1"), germinate("c1")])
    assert (first.status, first.epoch) == (CommandStatus.APPLIED, 1)
    assert again.status is CommandStatus.DUPLICATE
    assert SeedStage(trainer.model.slots["s1"].stage) is SeedStage.GERMINATED
    assert trainer.governor.snapshot is not None and "s1" in trainer.governor.snapshot.optimizers


def test_applied_ids_and_stop_survive_a_checkpoint(tmp_path: Path) -> None:
    folder = RunFolder.open(TINY, tmp_path, decide_in_process=False)
    folder.trainer.run_epoch()
    folder.trainer.apply_commands([germinate("c1"), AdaptationCommand(command_id="s", action=CommandAction.STOP)])
    folder.checkpoint()
    folder.close()
    resumed = RunFolder.open(TINY, tmp_path, resume=True, decide_in_process=False)
    assert resumed.trainer.stop_requested and resumed.trainer.epoch == 1
    (duplicate,) = resumed.trainer.apply_commands([germinate("c1")])
    assert duplicate.status is CommandStatus.DUPLICATE
    resumed.close()


def test_a_job_round_trips_through_its_stored_form_and_bad_fields_are_named() -> None:
    job = TrainingJob(
        task="digits", policy="none", epochs=5, seed=3, max_train_samples=200, host_channels=8, batch_size=50,
        lr=0.02, lr_schedule="constant", param_budget=1234, lockstep=True,
    )  # fmt: skip
    assert job_from_dict({**job.to_dict(), "mode": "lockstep"}) == job
    with pytest.raises(ValueError, match="epochs"):
        job_from_dict({**job.to_dict(), "epochs": 0})
    with pytest.raises(ValueError, match="field 'policy'"):
        build_trainer(TrainingJob(policy="gnn"))


def test_the_inbox_wakes_a_waiting_thread_for_the_named_command_and_for_interrupts() -> None:
    inbox = CommandInbox()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(inbox.wait_for_command(30, "wanted")))
    waiter.start()
    inbox.put_command(PendingCommand(germinate("other"), lambda error: None))
    inbox.put_command(PendingCommand(germinate("wanted"), lambda error: None))
    waiter.join(10)
    assert got == [True]
    assert [p.command.command_id for p in inbox.take_commands()] == ["other", "wanted"]
    waiter = threading.Thread(target=lambda: got.append(inbox.wait_for_command()))
    waiter.start()
    inbox.interrupt()
    waiter.join(10)
    assert got == [True, False]
    assert inbox.close() == [] and not inbox.put_command(PendingCommand(germinate("late"), lambda error: None))


def test_a_lockstep_wait_gives_up_on_a_command_held_back_behind_queued_ones_and_late_copies_are_known() -> None:
    inbox = CommandInbox()
    assert inbox.wait_for_command(0.05, "wanted", held_back_after_s=0.01) is False  # nothing queued: the timeout
    inbox.put_command(PendingCommand(germinate("first"), lambda error: None))
    started = time.monotonic()
    # "first" holds its read batch until the boundary: "wanted", read after it, cannot come before then
    assert inbox.wait_for_command(30, "wanted", held_back_after_s=0.2) is False
    assert 0.1 < time.monotonic() - started < 5
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(inbox.wait_for_command(30, "wanted", held_back_after_s=5)))
    waiter.start()
    inbox.put_command(PendingCommand(germinate("wanted"), lambda error: None))  # the same batch: it comes
    waiter.join(10)
    assert got == [True]
    assert not inbox.applied_from_decision("late")
    inbox.note_applied_from_decisions(["late"])
    assert inbox.applied_from_decision("late") and not inbox.applied_from_decision("first")


def test_a_decision_for_an_epoch_is_found_and_older_ones_dropped() -> None:
    inbox = CommandInbox()
    for epoch in (1, 2):
        inbox.put_decision(
            AdaptationDecision(
                decision_id=f"d{epoch}", epoch=epoch, action=DecisionAction.WAIT, reason="r", confidence=1
            )
        )
    assert [d.decision_id for d in inbox.wait_for_decisions(2, 1)] == ["d2"]
    assert inbox.wait_for_decisions(1, 0) is None


def test_a_boundary_of_several_decisions_is_complete_only_with_all_of_them_in_order() -> None:
    inbox = CommandInbox()

    def decision(index: int) -> AdaptationDecision:
        return AdaptationDecision(
            decision_id=f"d3.{index}", epoch=3, action=DecisionAction.WAIT, reason="r", confidence=1,
            index=index, count=3,
        )  # fmt: skip

    inbox.put_decision(decision(2))
    inbox.put_decision(decision(0))
    assert inbox.wait_for_decisions(3, 0.05) is None  # index 1 is missing
    inbox.put_decision(decision(1))
    assert [d.index for d in inbox.wait_for_decisions(3, 1)] == [0, 1, 2]


def test_every_message_the_trainer_produces_has_a_stream_and_others_are_refused() -> None:
    with pytest.raises(ValueError, match="training_job"):
        stream_for(TrainingJob())
