"""Applying adaptation commands to a model at an epoch boundary.

Slot commands go to Kasmina, which runs the gates; whatever Kasmina refuses
(a failing gate, an illegal transition, bad arguments) becomes a REJECTED
result carrying Kasmina's reason, never an exception that stops training.
Each seed gets its own optimizer at germination, dropped when it is culled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from esper.kasmina import MorphogeneticModel
from esper.kasmina.kernels import KernelLoader
from esper.leyline import AdaptationCommand, CommandAction, CommandResult, CommandStatus, SeedStage, TelemetryEvent

SeedOptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def apply_slot_command(
    model: MorphogeneticModel,
    optimizers: dict[str, torch.optim.Optimizer],
    command: AdaptationCommand,
    epoch: int,
    new_optimizer: SeedOptimizerFactory,
    *,
    kernels: KernelLoader | None = None,
    on_event: Callable[[TelemetryEvent], None] | None = None,
    val_loss: Callable[[], float] | None = None,
) -> CommandResult:
    """Carry out a slot command (germinate, advance, fossilize, cull, set_alpha) on ``model``.

    ``optimizers`` maps ``"host"`` and slot ids to optimizers; it gains an entry on
    germination and loses one on cull. With ``kernels``, a germinated seed comes
    from its compiled kernel when that loads; when it does not, the seed is built
    eagerly and ``on_event`` receives the ``kernel_fallback`` event saying why.
    Culling a seed the host has learned with puts the host back as it was when the
    seed joined only where that lowers ``val_loss()`` (without it: always).
    """

    def result(status: CommandStatus, reason: str) -> CommandResult:
        return CommandResult(
            command_id=command.command_id,
            action=command.action,
            status=status,
            slot_id=command.slot_id,
            epoch=epoch,
            reason=reason,
        )

    slot_id = command.slot_id
    assert slot_id is not None  # AdaptationCommand validates slot actions carry a slot
    reason = command.reason or f"{command.action.value} by {command.issued_by}"
    try:
        if slot_id not in model.slots:
            raise ValueError(f"field 'slot_id': unknown slot {slot_id!r} (known: {', '.join(model.slots)})")
        current = SeedStage(model.slots[slot_id].stage)
        if command.expected_stage is not None and current is not command.expected_stage:
            raise ValueError(
                f"stale: slot {slot_id!r} is {current.name}, the command was decided on "
                f"{SeedStage(command.expected_stage).name} (epoch {command.epoch})"
            )
        action = command.action
        if action is CommandAction.GERMINATE:
            assert command.blueprint is not None
            if kernels is not None:
                kernels.germinate(model, slot_id, command.blueprint, command.blueprint_config, epoch, reason, on_event)
            else:
                model.germinate(slot_id, command.blueprint, command.blueprint_config, epoch=epoch, reason=reason)
            optimizers[slot_id] = new_optimizer(model.seed_parameters(slot_id))
        elif action in (CommandAction.ADVANCE, CommandAction.FOSSILIZE):
            stage = SeedStage(model.slots[slot_id].stage)
            if action is CommandAction.FOSSILIZE and stage is not SeedStage.PROBATIONARY:
                raise ValueError(
                    f"field 'action': fossilize needs a PROBATIONARY seed (slot {slot_id!r} is {stage.name})"
                )
            model.advance(slot_id, epoch=epoch, reason=reason)
        elif action is CommandAction.CULL:
            model.cull(slot_id, epoch=epoch, reason=reason, val_loss=val_loss)
            optimizers.pop(slot_id, None)
        elif action is CommandAction.SET_ALPHA:
            assert command.alpha is not None
            model.set_alpha(slot_id, command.alpha, epoch=epoch, reason=reason)
        else:
            raise ValueError(f"field 'action': {action.value!r} is not a slot command")
    except ValueError as exc:  # GateFailedError and IllegalTransitionError are ValueErrors
        return result(CommandStatus.REJECTED, str(exc))
    return result(CommandStatus.APPLIED, reason)
