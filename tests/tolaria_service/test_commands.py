"""Commands from Tamiyo or an operator: applied at the epoch boundary, rejected with the reason, never twice;
lockstep makes a service run reproducible."""

from __future__ import annotations

from esper.leyline import (
    AdaptationCommand,
    CommandAction,
    CommandStatus,
    SeedStage,
    SeedTransition,
    streams,
)

from .harness import Bus, InProcessTolaria, ScriptedTamiyo, wait_until


def germinate(command_id: str, slot: str = "s1") -> AdaptationCommand:
    return AdaptationCommand(
        command_id=command_id, action=CommandAction.GERMINATE, slot_id=slot, blueprint="conv_light", issued_by="test"
    )


def test_commands_apply_at_the_boundary_illegal_ones_are_rejected_and_repeated_ids_are_duplicates(
    tolaria: InProcessTolaria, bus: Bus
) -> None:
    fossilize = AdaptationCommand(command_id="c-fossil", action=CommandAction.FOSSILIZE, slot_id="s1", issued_by="test")
    # epoch 1's boundary has two decisions (index 0 and 1 of 2): lockstep waits for both and applies both
    plan = {1: [germinate("c-germ"), germinate("c-germ2", "s2")], 2: [fossilize], 3: [germinate("c-germ")]}
    with ScriptedTamiyo(bus, "run-cmd", plan) as tamiyo:
        bus.submit("run-cmd", epochs=3, lockstep=True, lockstep_timeout_ms=10_000)
        finished = bus.wait_finished("run-cmd")
    # the two-command boundary did not wait out the lockstep timeout for its second command (when that one is
    # read after the first, it cannot arrive before the boundary: it is applied from its decision instead)
    assert tamiyo.decided_at[2] - tamiyo.decided_at[1] < 5.0

    applied, duplicate = bus.result_of("run-cmd", "c-germ")
    assert (applied.status, applied.epoch) == (CommandStatus.APPLIED, 1)
    assert (duplicate.status, duplicate.epoch) == (CommandStatus.DUPLICATE, 3)
    # applied at its boundary; a copy read only after that boundary (see above) is answered DUPLICATE at once,
    # not held to the next boundary (where it would hold back the commands behind it in turn)
    second, *late = bus.result_of("run-cmd", "c-germ2")
    assert (second.status, second.epoch) == (CommandStatus.APPLIED, 1)
    assert [(r.status, r.epoch) for r in late] in ([], [(CommandStatus.DUPLICATE, None)])
    (rejected,) = bus.result_of("run-cmd", "c-fossil")
    assert (rejected.status, rejected.epoch) == (CommandStatus.REJECTED, 2) and "PROBATIONARY" in rejected.reason
    # never interrupted and resumed from a checkpoint: every boundary's decisions were usable as they came
    assert "resumed_from_epoch" in finished.attributes and finished.attributes["resumed_from_epoch"] is None

    transitions = bus.messages(streams.TELEMETRY_EVENTS, "run-cmd", SeedTransition)
    germinated = [t for t in transitions if t.to_stage is SeedStage.GERMINATED]
    assert [(t.slot_id, t.epoch) for t in germinated] == [("s1", 1), ("s2", 1)]  # once each, despite the repeated id
    signals = bus.signals("run-cmd")
    assert signals[1].params_total > signals[0].params_total  # the seeds are in the model from epoch 2 on
    assert [r.stage for r in signals[0].seeds[:2]] == [SeedStage.DORMANT] * 2
    assert SeedStage.DORMANT not in [r.stage for r in signals[1].seeds[:2]]
    wait_until(lambda: bus.pending(streams.CONTROL_COMMANDS) == 0, 10, "every command to be acked")
    assert tolaria.sample("esper_tolaria_commands_total", action="germinate", status="applied") == 2
    assert tolaria.sample("esper_tolaria_commands_total", action="germinate", status="duplicate") == 1 + len(late)
    assert tolaria.sample("esper_tolaria_commands_total", action="fossilize", status="rejected") == 1


def comparable_signals(bus: Bus, run_id: str) -> list[dict]:
    """The run's signals without wall-clock fields."""
    return [{k: v for k, v in s.to_dict().items() if k != "epoch_seconds"} for s in bus.signals(run_id)]


def test_lockstep_runs_with_the_same_seed_publish_identical_signals(tolaria: InProcessTolaria, bus: Bus) -> None:
    for run_id in ("run-a", "run-b"):
        with ScriptedTamiyo(bus, run_id, {2: [germinate(f"{run_id}:e2:germinate:s1")]}):
            bus.submit(run_id, epochs=4, seed=7, lockstep=True, lockstep_timeout_ms=10_000)
            bus.wait_finished(run_id)
    a, b = comparable_signals(bus, "run-a"), comparable_signals(bus, "run-b")
    assert [s["epoch"] for s in a] == [1, 2, 3, 4]
    assert a == b
    assert a[2]["params_total"] > a[1]["params_total"]  # the germination took effect at epoch 2's boundary
    for run_id in ("run-a", "run-b"):
        (result,) = bus.result_of(run_id, f"{run_id}:e2:germinate:s1")
        assert (result.status, result.epoch) == (CommandStatus.APPLIED, 2)


def test_pause_holds_the_run_at_its_boundary_resume_continues_and_stop_ends_it_with_a_report(
    tolaria: InProcessTolaria, bus: Bus
) -> None:
    bus.submit("run-pause", epochs=40)
    wait_until(lambda: bus.signals("run-pause"), 60, "the first epoch")
    bus.command("run-pause", "op-pause", CommandAction.PAUSE)
    (paused,) = wait_until(lambda: bus.result_of("run-pause", "op-pause"), 30, "the pause result")
    assert paused.status is CommandStatus.APPLIED
    held = paused.epoch
    # a command sent while paused applies at the same boundary: no epoch ran in between
    bus.command("run-pause", "op-germ", CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light")
    (germ,) = wait_until(lambda: bus.result_of("run-pause", "op-germ"), 30, "the germinate result")
    assert (germ.status, germ.epoch) == (CommandStatus.APPLIED, held)
    assert max(s.epoch for s in bus.signals("run-pause")) == held
    wait_until(lambda: bus.pending(streams.CONTROL_COMMANDS) == 0, 10, "commands applied while paused to be acked")
    assert bus.pending(streams.CONTROL_JOBS) == 1  # the run is held, not over

    bus.command("run-pause", "op-resume", CommandAction.RESUME)
    wait_until(lambda: max(s.epoch for s in bus.signals("run-pause")) > held, 60, "epochs after resume")
    bus.command("run-pause", "op-stop", CommandAction.STOP)
    finished = bus.wait_finished("run-pause")
    (stop,) = bus.result_of("run-pause", "op-stop")
    assert stop.status is CommandStatus.APPLIED
    epochs = [s.epoch for s in bus.signals("run-pause")]
    assert epochs == list(range(1, stop.epoch + 1))  # every epoch once, none while paused, none after stop
    assert finished.attributes["epochs"] == stop.epoch < 40
    assert not any(s.paused for s in bus.signals("run-pause"))
    wait_until(lambda: bus.pending(streams.CONTROL_JOBS) == 0, 10, "the stopped job to be acked")


def test_a_command_racing_the_end_of_a_run_still_gets_a_result_and_is_acked(
    tolaria: InProcessTolaria, bus: Bus
) -> None:
    bus.submit("run-late", epochs=30)
    wait_until(lambda: bus.signals("run-late"), 60, "the first epoch")
    bus.command("run-late", "op-stop", CommandAction.STOP)
    bus.command("run-late", "op-late", CommandAction.GERMINATE, slot_id="s1", blueprint="conv_light")
    bus.wait_finished("run-late")
    (late,) = wait_until(lambda: bus.result_of("run-late", "op-late"), 30, "the late command's result")
    # either applied at the stop's boundary (read in the same batch) or rejected after the end: never silent
    assert late.status in (CommandStatus.APPLIED, CommandStatus.REJECTED)
    wait_until(lambda: bus.pending(streams.CONTROL_COMMANDS) == 0, 10, "both commands to be acked")


def test_in_lockstep_a_decisions_command_that_never_arrives_is_applied_from_the_decision(
    tolaria: InProcessTolaria, bus: Bus
) -> None:
    with ScriptedTamiyo(
        bus, "run-lost", {1: [germinate("run-lost:e1:germinate:s1")]}, withhold=frozenset({"run-lost:e1:germinate:s1"})
    ):
        bus.submit("run-lost", epochs=2, lockstep=True, lockstep_timeout_ms=1_000)
        bus.wait_finished("run-lost")
    (result,) = bus.result_of("run-lost", "run-lost:e1:germinate:s1")
    assert (result.status, result.epoch) == (CommandStatus.APPLIED, 1)
    first, second = bus.signals("run-lost")
    assert first.seeds[0].stage is SeedStage.DORMANT and second.params_total > first.params_total
