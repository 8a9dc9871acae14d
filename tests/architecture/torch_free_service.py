"""Run the Tamiyo service's code where ``import torch`` fails (``tests/architecture/test_packages.py`` runs this).

A meta-path finder refuses ``torch`` and ``torch.*`` (and records who tried).

* ``python torch_free_service.py``: the service's modules are imported, a run
  is steered through its decision loop over Oona's in-memory bus, its control
  API lists the run, and the heuristic decides once more through
  ``esper.tamiyo.decide.decide_boundary`` on the same hand-built epoch (the
  job's policy is ``heuristic-per-slot``: one decision per slot, all three
  germinate); prints ``OK``.
* ``python torch_free_service.py serve ARGS``: ``python -m esper.tamiyo.service
  ARGS`` itself, until it is signalled.

Either way the last line printed is JSON: what was imported and refused.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.abc
import json
import runpy
import sys
import time

BLOCKED = "torch"
#: Modules a torch-free, data-free Tamiyo must never load.
FORBIDDEN = ("torch", "sklearn", "mnist1d", "esper.tolaria", "esper.kasmina")
refused: list[str] = []


class RefuseTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            refused.append(name)
            raise ImportError(f"{name} is not importable in this process (torch-free check)")
        return None


sys.meta_path.insert(0, RefuseTorch())


def imports_report() -> dict[str, object]:
    """Forbidden modules loaded so far, and every refused import attempt."""
    imported = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    return {"imported": imported, "refused": sorted(set(refused))}


if sys.argv[1:2] == ["serve"]:  # the service's own entry point, reporting at exit
    atexit.register(lambda: print(json.dumps(imports_report()), flush=True))
    sys.argv = ["esper.tamiyo.service", *sys.argv[2:]]
    runpy.run_module("esper.tamiyo.service", run_name="__main__", alter_sys=True)

from fastapi.testclient import TestClient  # noqa: E402
from tamiyo_inputs import FIRST_DECISION, SLOTS, graph, signals  # noqa: E402

import esper.tamiyo.service.__main__  # noqa: E402, F401  (the entry point's imports)
from esper.leyline import (  # noqa: E402
    AdaptationCommand,
    AdaptationDecision,
    Envelope,
    SeedStage,
    TrainingJob,
    decode,
)
from esper.leyline import streams as ls  # noqa: E402
from esper.oona import InMemoryBus  # noqa: E402
from esper.tamiyo.api import create_app  # noqa: E402
from esper.tamiyo.collector import HealthCollector  # noqa: E402
from esper.tamiyo.decide import decide_boundary, run_snapshot  # noqa: E402
from esper.tamiyo.policies import DEFAULT_SAFETY, make_policy  # noqa: E402
from esper.tamiyo.safety import SafetyMonitor  # noqa: E402
from esper.tamiyo.service.control import RunControl  # noqa: E402
from esper.tamiyo.service.loop import DecisionLoop  # noqa: E402
from esper.tamiyo.service.metrics import TamiyoMetrics  # noqa: E402

TOKEN = "operator-token"
#: several decisions at a boundary go through the service's loop (the default heuristic decides once)
PER_SLOT_JOB = TrainingJob(epochs=5, policy="heuristic-per-slot")


async def steer_over_memory_bus() -> tuple[RunControl, list[AdaptationDecision], list[AdaptationCommand]]:
    """A job, its graph and one epoch through the service's decision loop over Oona's in-memory bus."""
    bus = InMemoryBus()
    collector, safety, metrics = HealthCollector(None), SafetyMonitor(DEFAULT_SAFETY), TamiyoMetrics()
    loop = DecisionLoop(collector, safety, bus, metrics)
    await loop.handle(Envelope(payload=PER_SLOT_JOB, run_id="run-a"))
    await loop.handle(Envelope(payload=graph(), run_id="run-a"))
    await loop.handle(Envelope(payload=signals(1), run_id="run-a"))
    decisions = [decode(data).payload for _, data in bus.entries(ls.CONTROL_DECISIONS)]
    commands = [decode(data).payload for _, data in bus.entries(ls.CONTROL_COMMANDS)]
    # the boundary after epoch 1: one decision per slot, each with its command
    assert [(d.index, d.count) for d in decisions] == [(i, len(SLOTS)) for i in range(len(SLOTS))], decisions
    assert [d.decision_id for d in decisions] == ["heuristic-e1", "heuristic-e1.1", "heuristic-e1.2"], decisions
    assert [c.command_id for c in commands] == [d.command_id for d in decisions], (decisions, commands)
    return RunControl(collector, safety, bus, metrics), decisions, commands


def control_api(control: RunControl) -> list[str]:
    """The control API over the same runs: it lists the steered run; the routes it serves."""
    app = create_app(control, api_token=TOKEN, registries=(TamiyoMetrics().registry,))
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}, "healthz"
        runs = client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert [r["run_id"] for r in runs.json()] == ["run-a"], runs.text
        paths = sorted(client.get("/openapi.json").json()["paths"])
    assert "/runs" in paths, paths
    return paths


def main() -> None:
    control, looped, commands = asyncio.run(steer_over_memory_bus())
    paths = control_api(control)
    job = PER_SLOT_JOB
    first = signals(1)
    snapshot = run_snapshot("run-b", first, graph=graph(), telemetry_at=time.time(), param_budget=job.param_budget)
    policy = make_policy(job.policy, job)
    boundary = decide_boundary(policy, first, snapshot, SafetyMonitor(DEFAULT_SAFETY), graph=graph())
    assert all(b.verdict.accepted for b in boundary), [b.verdict for b in boundary]
    d = boundary[0].decision
    assert {"action": d.action.value, "slot": d.slot_id, "blueprint": d.blueprint} == FIRST_DECISION, d
    assert [b.command.command_id for b in boundary if b.command] == [f"run-b:e1:germinate:{s}" for s in SLOTS]
    assert {b.command.expected_stage for b in boundary if b.command} == {SeedStage.DORMANT}, boundary

    # the service's loop and the in-process step decide the same on the same epoch
    def same(x: AdaptationDecision) -> tuple[object, ...]:
        return (x.action, x.slot_id, x.blueprint, dict(x.blueprint_config), x.index, x.count, x.decision_id)

    assert [same(x) for x in looped] == [same(b.decision) for b in boundary], (looped, boundary)
    assert [c.command_id for c in commands] == [f"run-a:e1:germinate:{s}" for s in SLOTS], commands
    report = {
        "decision": {"action": d.action.value, "slot": d.slot_id, "blueprint": d.blueprint},
        "routes": paths,
        **imports_report(),
    }
    try:  # the guard itself must work, or the lists above prove nothing
        import torch  # noqa: F401
    except ImportError:
        report["guard_refuses_torch"] = True
    else:
        report["guard_refuses_torch"] = False
    print("OK")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
