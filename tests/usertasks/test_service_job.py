"""``esper runs submit --task package.module:function``: the Tolaria service runs a user task from the bus.

The real service (in-process, on the test's real Redis) receives a TrainingJob naming a module on its
path; it trains that task, publishes the run's ModelGraph with the user's slots and their layouts, and
finishes with a report. A reference the service cannot import ends the run with run_failed naming the field.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from esper.leyline import ModelGraph, streams

HARNESS = Path(__file__).resolve().parents[1] / "tolaria_service" / "harness.py"


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tolaria_service_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _harness()


@pytest.fixture
def service(clean_redis_url: str, tmp_path: Path) -> Iterator[tuple[object, object]]:
    tolaria = harness.InProcessTolaria(clean_redis_url, tmp_path / "runs").start()
    bus = harness.Bus(clean_redis_url)
    try:
        yield tolaria, bus
    finally:
        bus.close()
        tolaria.stop()


def test_the_service_trains_a_user_task_named_by_reference(service: tuple) -> None:
    _, bus = service
    bus.submit("run-user", task="usertask_fixtures:make_task", epochs=2, policy="none", max_train_samples=None)
    finished = bus.wait_finished("run-user")
    graph = bus.messages(streams.TELEMETRY_TRAINING, "run-user", ModelGraph)[0]
    assert {s.slot_id: s.layout for s in graph.slots} == {"seq": "sequence", "vec": "linear"}
    assert [o.blueprint for o in graph.slot("seq").options][-1] == "attention"
    report = json.loads(Path(str(finished.attributes["report"])).read_text())
    assert report["task"] == "usertask_fixtures:make_task" and report["epochs"] == 2


def test_a_reference_the_service_cannot_import_fails_the_run_naming_the_field(service: tuple) -> None:
    _, bus = service
    bus.submit("run-missing", task="not_installed_here:make_task", epochs=1)
    failed = harness.wait_until(lambda: bus.events("run-missing", "run_failed"), 60, "run_failed")[0]
    assert "field 'task'" in failed.message and "not_installed_here" in failed.message
