"""The package graph: esper-* distributions depend on each other in one direction, and Tamiyo stays torch-free.

The graph is read from every ``libs/*/pyproject.toml`` and
``services/*/pyproject.toml`` (``dependencies`` and every optional extra), so
a dependency added anywhere is checked here. The torch-free claim is checked
twice: on paper (no path from ``esper-tamiyo`` or ``esper-tamiyo-service`` to a
torch-bearing package) and in a process where ``import torch`` fails
(``torch_free_service.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from esper.leyline import AdaptationCommand, AdaptationDecision, Envelope, Message, TrainingJob, decode
from esper.leyline import streams as ls
from esper.oona import RedisBus

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("torch_free_service.py")
sys.path.insert(0, str(PROBE.parent))

from tamiyo_inputs import FIRST_DECISION, graph, signals  # noqa: E402

#: Distributions that must install without torch (Tolaria's process imports the first; the second is a container).
TORCH_FREE = ("esper-tamiyo", "esper-tamiyo-service")
#: Distributions whose code runs models (torch, Kasmina's seeds, Tolaria's data sets).
MODEL_SIDE = ("esper-kasmina", "esper-tolaria")


@dataclass(frozen=True, slots=True)
class Requirement:
    name: str
    extras: frozenset[str]


@dataclass(frozen=True, slots=True)
class Distribution:
    name: str
    path: Path
    required: tuple[Requirement, ...]
    extras: dict[str, tuple[Requirement, ...]]

    def all_requirements(self) -> tuple[Requirement, ...]:
        return self.required + tuple(r for reqs in self.extras.values() for r in reqs)


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def normalize(name: str) -> str:
    """PEP 503: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> Requirement:
    match = _REQUIREMENT.match(text)
    if match is None:
        raise ValueError(f"unreadable requirement {text!r}")
    extras = frozenset(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
    return Requirement(normalize(match.group(1)), extras)


def read_distributions() -> dict[str, Distribution]:
    dists = {}
    for path in sorted([*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]):
        project = tomllib.loads(path.read_text())["project"]
        name = normalize(project["name"])
        assert name not in dists, f"{path}: distribution {name} is also defined in {dists[name].path}"
        dists[name] = Distribution(
            name=name,
            path=path.relative_to(ROOT),
            required=tuple(parse_requirement(r) for r in project.get("dependencies", [])),
            extras={
                extra: tuple(parse_requirement(r) for r in reqs)
                for extra, reqs in project.get("optional-dependencies", {}).items()
            },
        )
    return dists


DISTS = read_distributions()


def esper_graph(dists: dict[str, Distribution]) -> dict[str, list[str]]:
    """Edges between esper distributions, counting every extra."""
    return {
        d.name: sorted({r.name for r in d.all_requirements() if r.name.startswith("esper-")}) for d in dists.values()
    }


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when ``graph`` is acyclic."""
    state: dict[str, str] = {}  # "active" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "active":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def installed_with(dists: dict[str, Distribution], name: str) -> dict[str, list[str]]:
    """Everything ``pip install <name>`` pulls in (extras only where a requirement names them), with the path to it."""
    paths: dict[str, list[str]] = {name: [name]}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        current, extras = todo.pop()
        if (current, extras) in seen or current not in dists:
            continue
        seen.add((current, extras))
        dist = dists[current]
        reqs = dist.required + tuple(r for e in sorted(extras) for r in dist.extras.get(e, ()))
        for req in reqs:
            paths.setdefault(req.name, [*paths[current], req.name])
            todo.append((req.name, req.extras))
    return paths


def test_the_graph_is_read_from_every_package() -> None:
    # the checks below mean nothing if the reader silently found no packages or no edges
    assert {"esper-leyline", "esper-oona", "esper-kasmina", "esper-tolaria", *TORCH_FREE} <= set(DISTS)
    assert "esper-leyline" in esper_graph(DISTS)["esper-tamiyo"]


def test_every_esper_dependency_names_a_package_in_this_repository() -> None:
    unknown = {
        f"{d.path}: {r.name}"
        for d in DISTS.values()
        for r in d.all_requirements()
        if r.name.startswith("esper-") and r.name not in DISTS
    }
    assert not unknown, f"dependencies on esper packages that do not exist: {sorted(unknown)}"


def test_esper_packages_have_no_dependency_cycle() -> None:
    cycle = find_cycle(esper_graph(DISTS))
    assert cycle is None, "dependency cycle: " + " -> ".join(cycle or [])


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_leyline_depends_on_no_esper_package() -> None:
    assert esper_graph(DISTS)["esper-leyline"] == []


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_packages_never_reach_the_model_side(name: str) -> None:
    # every extra counts here: a Tamiyo that can be installed next to Tolaria's code would also import it
    edges = esper_graph(DISTS)
    reach, todo = set(), [name]
    while todo:
        for nxt in edges.get(todo.pop(), []):
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert not reach & set(MODEL_SIDE), f"{name} depends on {sorted(reach & set(MODEL_SIDE))}"


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_packages_install_without_torch(name: str) -> None:
    # an optional extra of the package itself (Tamiyo's learned policy) may bring torch; the plain install may not
    installed = installed_with(DISTS, name)
    bearing = {n: " -> ".join(p) for n, p in installed.items() if n in ("torch", *MODEL_SIDE)}
    assert not bearing, f"pip install {name} pulls in: {bearing}"


def test_torch_bearing_packages_are_seen_as_such() -> None:
    # the check above can fail: Tolaria's install does pull torch in (through Kasmina)
    assert "torch" in installed_with(DISTS, "esper-tolaria")


# -- the same claim, run: the service's code where importing torch fails ------------------------------------


@pytest.fixture(scope="module")
def torch_free_run() -> dict[str, object]:
    proc = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:-1] == ["OK"], proc.stdout
    report: dict[str, object] = json.loads(lines[-1])
    assert report["guard_refuses_torch"] is True, "the import guard let torch through: the run proves nothing"
    return report


def test_tamiyo_service_runs_where_torch_cannot_be_imported(torch_free_run: dict[str, object]) -> None:
    assert torch_free_run["decision"] == FIRST_DECISION
    assert "/runs/{run_id}/adaptations" in torch_free_run["routes"]  # type: ignore[operator]
    assert torch_free_run["refused"] == [], "code on the Tamiyo service's path tried to import torch"
    assert "torch" not in torch_free_run["imported"]  # type: ignore[operator]


def test_tamiyo_service_loads_neither_the_model_side_nor_a_data_set(torch_free_run: dict[str, object]) -> None:
    assert torch_free_run["imported"] == [], "the Tamiyo service imported model-side modules"


# -- the service's own entry point, as a process, where importing torch fails --------------------------------


TOKEN = "operator-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    out: Path
    err: Path

    def wait_for(self, check: Callable[[], object], what: str, timeout_s: float = 60.0) -> object:
        """``check()``'s first truthy answer; fails at once if the service exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}:\n{self.err.read_text()[-4000:]}")
            try:
                found = check()
            except httpx.TransportError:
                found = None
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")

    def stop(self) -> dict[str, object]:
        """SIGTERM; the exit code must be 0 and the last stdout line is the probe's import report."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=30)
        assert rc == 0, f"exit {rc}\n{self.err.read_text()[-4000:]}"
        report: dict[str, object] = json.loads(self.out.read_text().strip().splitlines()[-1])
        return report


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    started: list[Service] = []

    def start(redis_url: str) -> Service:
        port = free_port()
        out, err = tmp_path / f"tamiyo-{port}.out", tmp_path / f"tamiyo-{port}.err"
        argv = [sys.executable, str(PROBE), "serve", "--redis-url", redis_url, "--port", str(port)]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            env = {**os.environ, "ESPER_API_TOKEN": TOKEN}
            proc = subprocess.Popen(
                [*argv, "--consumer", "tamiyo-arch"], stdout=stdout, stderr=stderr, cwd=ROOT, env=env
            )
        service = Service(proc, f"http://127.0.0.1:{port}", out, err)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=30)


async def publish_run(redis_url: str, run_id: str) -> None:
    """What Tolaria publishes when a run starts and its first epoch ends (a job asking the heuristic once per
    boundary; the torch-free probe runs the default, once per slot)."""
    bus = RedisBus.from_url(redis_url)
    try:
        await bus.publish(ls.CONTROL_JOBS, Envelope(payload=TrainingJob(epochs=5, policy="heuristic"), run_id=run_id))
        await bus.publish(ls.TELEMETRY_TRAINING, Envelope(payload=graph(), run_id=run_id))
        await bus.publish(ls.TELEMETRY_TRAINING, Envelope(payload=signals(1), run_id=run_id))
    finally:
        await bus.aclose()


def published_for(redis_url: str, run_id: str, stream: str, kind: type[Message]) -> list[Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(stream)
    finally:
        client.close()
    envelopes = [decode(fields[ls.ENVELOPE_FIELD.encode()]) for _, fields in entries]
    return [e.payload for e in envelopes if e.run_id == run_id and isinstance(e.payload, kind)]


def test_tamiyo_service_process_steers_a_run_where_torch_cannot_be_imported(
    clean_redis_url: str, start_service: Callable[[str], Service]
) -> None:
    service = start_service(clean_redis_url)
    service.wait_for(lambda: httpx.get(service.url + "/readyz").status_code == 200, "the service to be ready")
    asyncio.run(publish_run(clean_redis_url, "run-notorch"))
    # the boundary after epoch 1: the heuristic asked once per boundary decides once
    decisions: list[AdaptationDecision] = service.wait_for(  # type: ignore[assignment]
        lambda: (
            (d := published_for(clean_redis_url, "run-notorch", ls.CONTROL_DECISIONS, AdaptationDecision))
            and len(d) == d[0].count
            and d
        ),
        "the boundary's decisions",
    )
    assert [(d.index, d.count) for d in decisions] == [(0, 1)], decisions
    commands = published_for(clean_redis_url, "run-notorch", ls.CONTROL_COMMANDS, AdaptationCommand)
    assert [c.command_id for c in commands] == ["run-notorch:e1:germinate:s1"], commands
    assert [d.command_id for d in decisions] == [c.command_id for c in commands]
    first = commands[0]
    assert {"action": first.action.value, "slot": first.slot_id, "blueprint": first.blueprint} == FIRST_DECISION
    runs = httpx.get(service.url + "/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert [r["run_id"] for r in runs.json()] == ["run-notorch"], runs.text
    assert service.stop() == {"imported": [], "refused": []}


def test_tamiyo_service_process_waits_for_redis_where_torch_cannot_be_imported(
    start_service: Callable[[str], Service],
) -> None:
    service = start_service(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    ready = service.wait_for(
        lambda: "waiting for Redis" in (r := httpx.get(service.url + "/readyz")).json().get("reason", "") and r,
        "/readyz to say it waits for Redis",
        timeout_s=30,
    )
    assert ready.status_code == 503, ready.text  # type: ignore[attr-defined]
    time.sleep(1.0)  # and it keeps waiting
    assert service.proc.poll() is None, service.err.read_text()[-4000:]
    assert service.stop() == {"imported": [], "refused": []}
