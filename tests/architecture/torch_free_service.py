"""Run the Tamiyo service's code where ``import torch`` fails (``tests/architecture/test_packages.py`` runs this).

A meta-path finder refuses ``torch`` and ``torch.*`` (and records who tried).

* ``python torch_free_service.py``: the service's modules are imported, a run
  is steered through its decision loop over Oona's in-memory bus, its control
  API lists the run, and the heuristic decides once more through
  ``esper.tamiyo.decide.decide`` on the same hand-built epoch; prints ``OK``.
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
from tamiyo_inputs import FIRST_DECISION, graph, signals  # noqa: E402

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
from esper.tamiyo.decide import decide, run_snapshot  # noqa: E402
from esper.tamiyo.policies import DEFAULT_SAFETY, make_policy  # noqa: E402
from esper.tamiyo.safety import SafetyMonitor  # noqa: E402
from esper.tamiyo.service.control import RunControl  # noqa: E402
from esper.tamiyo.service.loop import DecisionLoop  # noqa: E402
from esper.tamiyo.service.metrics import TamiyoMetrics  # noqa: E402

TOKEN = "operator-token"


async def steer_over_memory_bus() -> tuple[RunControl, AdaptationDecision, AdaptationCommand]:
    """A job, its graph and one epoch through the service's decision loop over Oona's in-memory bus."""
    bus = InMemoryBus()
    collector, safety, metrics = HealthCollector(None), SafetyMonitor(DEFAULT_SAFETY), TamiyoMetrics()
    loop = DecisionLoop(collector, safety, bus, metrics)
    await loop.handle(Envelope(payload=TrainingJob(epochs=5), run_id="run-a"))
    await loop.handle(Envelope(payload=graph(), run_id="run-a"))
    await loop.handle(Envelope(payload=signals(1), run_id="run-a"))
    decisions = [decode(data).payload for _, data in bus.entries(ls.CONTROL_DECISIONS)]
    commands = [decode(data).payload for _, data in bus.entries(ls.CONTROL_COMMANDS)]
    assert len(decisions) == 1 and len(commands) == 1, (decisions, commands)
    return RunControl(collector, safety, bus, metrics), decisions[0], commands[0]


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
    control, looped, command = asyncio.run(steer_over_memory_bus())
    paths = control_api(control)
    job = TrainingJob(epochs=5)
    first = signals(1)
    snapshot = run_snapshot("run-b", first, graph=graph(), telemetry_at=time.time(), param_budget=job.param_budget)
    decided = decide(make_policy("heuristic", job), first, snapshot, SafetyMonitor(DEFAULT_SAFETY), graph=graph())
    d = decided.decision
    assert decided.verdict.accepted, decided.verdict
    assert {"action": d.action.value, "slot": d.slot_id, "blueprint": d.blueprint} == FIRST_DECISION, d
    assert decided.command is not None and decided.command.command_id == "run-b:e1:germinate:s1", decided.command
    assert decided.command.expected_stage is SeedStage.DORMANT, decided.command
    # the service's loop and the in-process step decide the same on the same epoch
    assert (looped.action, looped.slot_id, looped.blueprint, dict(looped.blueprint_config)) == (
        d.action, d.slot_id, d.blueprint, dict(d.blueprint_config),
    ), (looped, d)  # fmt: skip
    assert command.command_id == "run-a:e1:germinate:s1", command
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
