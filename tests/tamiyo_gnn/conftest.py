"""Observations of two real hosts (ConvHost1D with 3 slots, a 4-slot MLPHost) described by Kasmina."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import ConvHost1D, MLPHost, wrap
from esper.kasmina.graph import describe
from esper.leyline import ModelGraph, SeedStage, SeedStateReport, TrainingSignals
from esper.tamiyo.gnn.observation import GraphObservation


def observe(graph: ModelGraph, reports: dict[str, SeedStateReport] | None = None, **kw) -> GraphObservation:
    reports = reports or {}
    seeds = [reports.get(s.slot_id) or SeedStateReport(slot_id=s.slot_id, stage=SeedStage.DORMANT) for s in graph.slots]
    signals = TrainingSignals(
        epoch=kw.pop("epoch", 3),
        train_loss=1.0,
        val_loss=1.2,
        train_accuracy=0.6,
        val_accuracy=0.55,
        params_total=graph.params_total,
        seeds=seeds,
    )
    return GraphObservation(
        graph=graph,
        signals=signals,
        health=kw.pop("health", None),
        loss_history=(1.5, 1.3, 1.2),
        accuracy_history=(0.4, 0.5, 0.55),
        params_initial=graph.params_total,
        epochs_total=10,
        param_budget=kw.pop("param_budget", None),
    )


@pytest.fixture(scope="session")
def conv_graph() -> ModelGraph:
    model = wrap(ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS)
    return describe(model, torch.randn(2, 40))


@pytest.fixture(scope="session")
def mlp_graph() -> ModelGraph:
    host = MLPHost(64, 24, 10, depth=4)
    return describe(wrap(host, host.default_slots), torch.randn(2, 64))


torch.set_num_threads(1)  # as in the Tamiyo service and Simic's workers
