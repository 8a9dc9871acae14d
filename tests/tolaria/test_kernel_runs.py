"""A run germinates from compiled kernels when Urza has them and trains exactly as the eager run does.

Urza is the real app on a real port (``tests/urza_server.py``) holding the
kernels Tezzeret's compiler makes for every option of every slot of the run's
model (what Tamiyo's prefetch asks for), and the run is configured as a
service's is: ``ESPER_URZA_URL`` and ``ESPER_KERNEL_CACHE``, through
:func:`esper.tolaria.runs.run` and its process-wide loader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from urza_server import UrzaServer

from esper.kasmina.kernels import process_loader
from esper.leyline import TrainingJob
from esper.tamiyo.service.kernels import compile_requests
from esper.tezzeret.compiler import compile_kernel
from esper.tolaria.runs import build_trainer, run

pytestmark = pytest.mark.slow

#: The stack tests' quick job: a rate so small that validation plateaus at once, so the heuristic germinates early.
JOB = TrainingJob(
    task="mnist1d", policy="heuristic", epochs=8, max_train_samples=600, lr=0.0003, lr_schedule="constant"
)


def events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def germinations(report: dict[str, Any]) -> list[tuple[int, str, str | None, str]]:
    return [(e["epoch"], e["slot"], e["blueprint"], e["to"]) for e in report["seed_events"]]


def fallbacks(out: Path) -> list[dict[str, Any]]:
    return [e for e in events(out) if e.get("kind") == "kernel_fallback"]


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The job without kernels (no ``ESPER_URZA_URL``)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ESPER_URZA_URL", raising=False)
        report = run(JOB, tmp_path_factory.mktemp("eager"), progress=False)
    assert any(e[3] == "GERMINATED" for e in germinations(report)), "the job must germinate for the test to mean much"
    return report


@pytest.fixture(scope="module")
def urza(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UrzaServer]:
    server = UrzaServer(tmp_path_factory.mktemp("urza")).start()
    yield server
    server.stop()


def publish_kernels(urza: UrzaServer, blueprints: set[str]) -> int:
    """Compile and publish the kernels Tamiyo's prefetch asks for (the run's slot options), as Tezzeret does;
    only those of ``blueprints``, to keep the test short."""
    graph = build_trainer(JOB, kernels=None).describe_graph()
    requests = [r for r in compile_requests(graph) if r.blueprint_id in blueprints]
    for request in requests:
        shape = tuple(request.input_shape)
        compiled = compile_kernel(request.blueprint_id, shape, dict(request.config), request.layout, repeats=1)
        urza.publish_kernel(
            request.blueprint_id,
            list(shape),
            compiled.artifact,
            layout=request.layout,
            config=dict(request.config),
            artifact_format=compiled.artifact_format,
        )
    return len(requests)


def test_a_run_germinates_from_kernels_and_ends_exactly_as_the_eager_run(eager, urza, tmp_path, monkeypatch):
    assert publish_kernels(urza, {e[2] for e in germinations(eager) if e[2]}) > 0
    monkeypatch.setenv("ESPER_URZA_URL", urza.url)
    monkeypatch.setenv("ESPER_KERNEL_CACHE", str(tmp_path / "kernels"))
    loader = process_loader()
    assert loader is not None and loader is process_loader()  # one per process and settings
    misses, hits = loader.metrics.cache_misses._value.get(), loader.metrics.cache_hits._value.get()

    report = run(JOB, tmp_path / "run", progress=False)

    germinated = [e for e in germinations(report) if e[3] == "GERMINATED"]
    loads = loader.metrics.cache_misses._value.get() - misses + loader.metrics.cache_hits._value.get() - hits
    assert loads == len(germinated) > 0  # every germination loaded its kernel (fetched or from the cache)
    assert fallbacks(tmp_path / "run") == []
    assert germinations(report) == germinations(eager)
    assert report["final_test_accuracy"] == eager["final_test_accuracy"]
    assert report["params_final"] == eager["params_final"]
    assert [h["val_loss"] for h in report["history"]] == [h["val_loss"] for h in eager["history"]]


def test_without_the_kernels_a_run_falls_back_to_eager_reports_why_and_ends_the_same(eager, tmp_path, monkeypatch):
    empty = UrzaServer(tmp_path / "urza").start()  # an Urza that has no kernels at all
    try:
        monkeypatch.setenv("ESPER_URZA_URL", empty.url)
        monkeypatch.setenv("ESPER_KERNEL_CACHE", str(tmp_path / "kernels"))
        report = run(JOB, tmp_path / "run", progress=False)
    finally:
        empty.stop()
    germinated = [e for e in germinations(report) if e[3] == "GERMINATED"]
    seen = fallbacks(tmp_path / "run")
    assert [(e["slot_id"], e["attributes"]["failure"]) for e in seen] == [(g[1], "not_found") for g in germinated]
    assert germinations(report) == germinations(eager)
    assert report["final_test_accuracy"] == eager["final_test_accuracy"]
    assert report["params_final"] == eager["params_final"]


def test_a_bad_kernel_setting_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ESPER_URZA_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ESPER_KERNEL_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="ESPER_KERNEL_CACHE_BYTES='lots'"):
        process_loader()
    monkeypatch.setenv("ESPER_URZA_URL", "urza:8703")
    with pytest.raises(ValueError, match="ESPER_URZA_URL='urza:8703'"):
        process_loader()


def test_an_unwritable_default_cache_moves_to_the_temp_dir_but_a_named_one_is_an_error(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("ESPER_URZA_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("ESPER_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # ~/.cache/esper/kernels cannot be made under a file
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    loader = process_loader()
    assert loader is not None and loader.cache.root.parent == tmp_path / "tmp"
    monkeypatch.setenv("ESPER_KERNEL_CACHE", str(blocked / "kernels"))
    with pytest.raises(ValueError, match="ESPER_KERNEL_CACHE="):
        process_loader()
