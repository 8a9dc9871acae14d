"""Two realistic runs as Tolaria and Tamiyo would publish them, passed through the wire codec.

Run ``run-a`` germinates ``conv_light`` in ``s2`` on a plateau, trains it, then
has a cull of ``s1`` rejected by the safety monitor. Run ``run-b`` has a
fossilize command rejected by the trainer. ``produced_at`` times are fixed so
the command round trips are known: 0.75 s in run-a, 2.5 s in run-b.
"""

from __future__ import annotations

from typing import Any

from esper.leyline import (
    AdaptationCommand,
    AdaptationDecision,
    CommandAction,
    CommandResult,
    CommandStatus,
    DecisionAction,
    Envelope,
    LayerHealth,
    LayerHealthReport,
    Message,
    SeedStage,
    SeedStateReport,
    SeedTransition,
    TelemetryEvent,
    TrainingSignals,
    decode,
    encode,
)

T0 = 1_700_000_000.0
RUN_A = "run-a"
RUN_B = "run-b"
ROUND_TRIP_A = 0.75
ROUND_TRIP_B = 2.5
GERMINATE_REASON = "validation loss plateaued; s2 has the highest gradient norm"
CULL_REASON = "s1 contribution negative for 3 epochs"
EMBARGO_REASON = "embargo: slot s1 was culled 2 epochs ago"
TRAINER_REJECTION = "slot s3 is still SHADOWING"


def wire(message: Message, run_id: str, at: float, message_id: str | None = None) -> Envelope[Message]:
    """Encode and decode, as the bus would deliver it."""
    fields: dict[str, Any] = {"payload": message, "run_id": run_id, "produced_at": at}
    if message_id is not None:
        fields["message_id"] = message_id
    return decode(encode(Envelope(**fields)))


def signals(
    epoch: int, *, plateau: int = 0, val_accuracy: float = 0.6, s2: SeedStage = SeedStage.DORMANT
) -> TrainingSignals:
    return TrainingSignals(
        epoch=epoch,
        train_loss=1.0 - 0.05 * epoch,
        val_loss=1.1 - 0.04 * epoch,
        train_accuracy=val_accuracy + 0.05,
        val_accuracy=val_accuracy,
        plateau_epochs=plateau,
        params_total=900 if s2 is SeedStage.DORMANT else 1_150,
        seeds=[
            SeedStateReport(slot_id="s1", stage=SeedStage.BLENDING, alpha=0.5, contribution=-0.01),
            SeedStateReport(slot_id="s2", stage=s2, blueprint="conv_light" if s2 is not SeedStage.DORMANT else None),
        ],
    )


def run_a() -> list[Envelope[Message]]:
    msgs: list[tuple[Message, float]] = []
    for epoch, plateau in ((0, 0), (1, 1), (2, 2), (3, 3)):
        msgs.append((signals(epoch, plateau=plateau, val_accuracy=0.6 + 0.01 * epoch), T0 + epoch))
    msgs.append(
        (
            AdaptationDecision(
                decision_id="dec-a1",
                epoch=3,
                action=DecisionAction.GERMINATE,
                slot_id="s2",
                blueprint="conv_light",
                reason=GERMINATE_REASON,
                confidence=0.6,
                command_id="cmd-a1",
            ),
            T0 + 3.1,
        )
    )
    germinate = AdaptationCommand(
        command_id="cmd-a1", action=CommandAction.GERMINATE, slot_id="s2", blueprint="conv_light", epoch=3
    )
    msgs.append((germinate, T0 + 3.2))
    msgs.append(
        (
            CommandResult(command_id="cmd-a1", action=CommandAction.GERMINATE, status=CommandStatus.APPLIED, epoch=4),
            T0 + 3.2 + ROUND_TRIP_A,
        )
    )
    msgs.append(
        (
            SeedTransition(
                epoch=4,
                slot_id="s2",
                blueprint="conv_light",
                from_stage=SeedStage.DORMANT,
                to_stage=SeedStage.GERMINATED,
                reason="G0 passed: ids valid",
            ),
            T0 + 4.0,
        )
    )
    msgs.append(
        (
            SeedTransition(
                epoch=4,
                slot_id="s2",
                blueprint="conv_light",
                from_stage=SeedStage.GERMINATED,
                to_stage=SeedStage.TRAINING,
                reason="G1 passed: germinated",
                metrics={"improvement": 0.031},
            ),
            T0 + 4.1,
        )
    )
    msgs.append((signals(4, plateau=0, val_accuracy=0.66, s2=SeedStage.TRAINING), T0 + 4.5))
    msgs.append((LayerHealth(epoch=4, layers=[LayerHealthReport(layer="conv1", dead_ratio=0.6)]), T0 + 4.6))
    msgs.append((signals(5, plateau=0, val_accuracy=0.7, s2=SeedStage.TRAINING), T0 + 5.0))
    msgs.append(
        (
            AdaptationDecision(
                decision_id="dec-a2",
                epoch=5,
                action=DecisionAction.CULL,
                slot_id="s1",
                reason=CULL_REASON,
                confidence=0.55,
                accepted=False,
                rejection_reason=EMBARGO_REASON,
            ),
            T0 + 5.1,
        )
    )
    msgs.append(
        (
            AdaptationDecision(
                decision_id="dec-a3", epoch=5, action=DecisionAction.WAIT, reason="nothing to do", confidence=0.9
            ),
            T0 + 5.2,
        )
    )
    msgs.append(
        (TelemetryEvent(kind="checkpoint", epoch=5, message="checkpoint written", attributes={"bytes": 4096}), T0 + 5.3)
    )
    return [wire(m, RUN_A, at) for m, at in msgs]


def run_b() -> list[Envelope[Message]]:
    fossilize = AdaptationCommand(command_id="cmd-b1", action=CommandAction.FOSSILIZE, slot_id="s3", epoch=7)
    msgs: list[tuple[Message, float]] = [
        (signals(7, plateau=1, val_accuracy=0.8), T0 + 100.0),
        (
            AdaptationDecision(
                decision_id="dec-b1",
                epoch=7,
                action=DecisionAction.FOSSILIZE,
                slot_id="s3",
                reason="s3 contributes +2.1% accuracy",
                confidence=0.8,
                command_id="cmd-b1",
            ),
            T0 + 100.1,
        ),
        (fossilize, T0 + 100.2),
        (
            CommandResult(
                command_id="cmd-b1",
                action=CommandAction.FOSSILIZE,
                status=CommandStatus.REJECTED,
                reason=TRAINER_REJECTION,
                epoch=8,
            ),
            T0 + 100.2 + ROUND_TRIP_B,
        ),
    ]
    return [wire(m, RUN_B, at) for m, at in msgs]


def interleaved() -> list[Envelope[Message]]:
    """Both runs, their messages alternating, as one consumer would see two concurrent runs."""
    a, b = run_a(), run_b()
    out: list[Envelope[Message]] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out
