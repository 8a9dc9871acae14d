"""Decision time of the learned Tamiyo on CPU for a 64-node model graph. Target: p99 <= 5 ms.

The graph is Kasmina's description of a real host (an ``MLPHost`` of depth 21
with slots after 19 of its activations: input + 43 layers (42 + the head) + 19 slots + output
= 64 nodes, every slot with its priced blueprint options), with a mix of slot
stages and layer health. One timed call is ``GNNTamiyo.decide`` as Tolaria or
the Tamiyo service makes it: featurize the messages, run the network, build the
decision. The path is lean (:mod:`esper.tamiyo.gnn.inference`): the graph's
static tensors are built once per graph (not per call), the self-looped edges
once per graph structure, and the network runs as plain tensor operations under
``torch.inference_mode``, greedy, with no batching or distributions.
``HeuristicTamiyo.decide`` on the same messages is timed alternately
with it, so the ratio is measured side by side. One torch thread, as in Simic's
workers and the Tamiyo service.

    .venv/bin/python benchmarks/policy_latency.py [--calls 500]

Wall-clock time is what a run waits; the thread's CPU time per decision is
reported beside it (``gnn_cpu_*``), with the machine's load average, because on
a shared machine the wall-clock tail measures the other processes as much as
the policy. ``met`` judges the wall-clock p99.

Last line: JSON with ``gnn_p50_ms``, ``gnn_p99_ms``, ``gnn_cpu_p50_ms``, ``gnn_cpu_p99_ms``,
``heuristic_p50_ms``, ``ratio_p50``, ``nodes``, ``slots``, ``load_average_1m``, ``target_p99_ms`` and ``met``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from esper.kasmina import MLPHost, wrap
from esper.kasmina.graph import describe
from esper.leyline import LayerHealth, LayerHealthReport, SeedStage, SeedStateReport, TrainingJob, TrainingSignals
from esper.tamiyo.gnn.policy import GNNPolicyConfig, GNNTamiyo
from esper.tamiyo.policies import make_policy

TARGET_P99_MS = 5.0
STAGES = (SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.FOSSILIZED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    host = MLPHost(64, 32, 10, depth=21)
    slots = {sid: module for sid, module in list(host.default_slots.items())[:19]}
    graph = describe(wrap(host, slots), torch.randn(2, 64))
    reports = [
        SeedStateReport(slot_id=s.slot_id, stage=STAGES[i % len(STAGES)], epochs_in_stage=i % 4, alpha=0.5)
        for i, s in enumerate(graph.slots)
    ]
    layers = [LayerHealthReport(layer=m, activation_variance=0.5, dead_ratio=0.1) for m in slots.values()]
    health = LayerHealth(epoch=5, layers=layers)

    def signals(epoch: int) -> TrainingSignals:
        return TrainingSignals(
            epoch=epoch,
            train_loss=1.0 / epoch,
            val_loss=1.1 / epoch,
            train_accuracy=0.5,
            val_accuracy=0.45,
            params_total=graph.params_total,
            seeds=reports,
        )

    gnn = GNNTamiyo(config=GNNPolicyConfig(epochs_total=10_000, param_budget=graph.params_total * 2))
    heuristic = make_policy("heuristic", TrainingJob(task="mnist1d", epochs=10_000))
    times: dict[str, list[float]] = {"gnn": [], "heuristic": []}
    cpu: dict[str, list[float]] = {"gnn": [], "heuristic": []}
    for call in range(args.warmup + args.calls):
        for name, policy in (("gnn", gnn), ("heuristic", heuristic)):
            s = signals(call + 1)
            started, started_cpu = time.perf_counter(), time.thread_time()
            policy.decide(s, graph=graph, health=health)
            elapsed = (time.perf_counter() - started) * 1000.0
            if call >= args.warmup:
                times[name].append(elapsed)
                cpu[name].append((time.thread_time() - started_cpu) * 1000.0)
    gnn_p50, gnn_p99 = np.percentile(times["gnn"], [50, 99])
    heur_p50, heur_p99 = np.percentile(times["heuristic"], [50, 99])
    cpu_p50, cpu_p99 = np.percentile(cpu["gnn"], [50, 99])
    print(
        json.dumps(
            {
                "benchmark": "policy_latency",
                "nodes": len(graph.nodes),
                "edges": len(graph.edges),
                "slots": len(graph.slots),
                "options": sum(len(s.options) for s in graph.slots),
                "calls": args.calls,
                "gnn_p50_ms": round(float(gnn_p50), 3),
                "gnn_p99_ms": round(float(gnn_p99), 3),
                "heuristic_p50_ms": round(float(heur_p50), 3),
                "heuristic_p99_ms": round(float(heur_p99), 3),
                "ratio_p50": round(float(gnn_p50 / heur_p50), 1),
                "gnn_cpu_p50_ms": round(float(cpu_p50), 3),
                "gnn_cpu_p99_ms": round(float(cpu_p99), 3),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "target_p99_ms": TARGET_P99_MS,
                "met": bool(gnn_p99 <= TARGET_P99_MS),
            }
        )
    )


if __name__ == "__main__":
    main()
