"""Germinate commands applied with a kernel loader: the kernel when it loads, eager plus an event when not."""

from __future__ import annotations

import torch
from prometheus_client import CollectorRegistry
from urza_server import free_port

from esper.kasmina import ConvHost1D, wrap
from esper.kasmina.kernels import KernelCache, KernelLoader, KernelMetrics, UrzaSource
from esper.leyline import AdaptationCommand, CommandAction, CommandStatus, EventKind, SeedStage, TelemetryEvent
from esper.tolaria.commands import apply_slot_command


def test_a_germinate_command_falls_back_to_eager_and_reports_it_when_urza_is_down(tmp_path):
    torch.manual_seed(0)
    model = wrap(ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS)
    model.probe(torch.randn(2, 40))
    source = UrzaSource(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    loader = KernelLoader(source, KernelCache(tmp_path), KernelMetrics(CollectorRegistry()))
    events: list[TelemetryEvent] = []
    optimizers: dict[str, torch.optim.Optimizer] = {}
    command = AdaptationCommand(command_id="c1", action=CommandAction.GERMINATE, slot_id="s2", blueprint="depthwise")
    result = apply_slot_command(
        model, optimizers, command, 4, lambda p: torch.optim.SGD(p, lr=0.1), kernels=loader, on_event=events.append
    )
    assert result.status is CommandStatus.APPLIED, result.reason
    assert model.slot("s2").stage is SeedStage.GERMINATED and "s2" in optimizers
    assert [(e.kind, e.slot_id, e.attributes["failure"]) for e in events] == [
        (EventKind.KERNEL_FALLBACK, "s2", "urza_unavailable")
    ]
    bad = AdaptationCommand(command_id="c2", action=CommandAction.GERMINATE, slot_id="s2", blueprint="depthwise")
    again = apply_slot_command(model, optimizers, bad, 4, lambda p: torch.optim.SGD(p, lr=0.1), kernels=loader)
    assert again.status is CommandStatus.REJECTED and len(events) == 1  # no kernel tried for a refused germination
