"""Registered policies: a directory of learned policy files, listed on the API, a live run switched to one.

The real service process on a real Redis, twice: with torch (the switch loads a
policy file Simic wrote, and the next epoch is decided by it) and where torch
cannot be imported (``tests/architecture/torch_free_service.py``: the switch is
a 422 naming the policy and the missing extra, and the service keeps steering).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from esper.cli.main import main
from esper.cli.redis_local import free_port
from esper.leyline import AdaptationDecision, Envelope, TrainingJob
from esper.leyline import streams as ls
from esper.oona import RedisBus
from esper.tamiyo.policies import SHIPPED_POLICIES
from esper.tamiyo.service import registry as registry_module
from esper.tamiyo.service.registry import PolicyRefused, PolicyRegistry

from .scenario import published

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "architecture" / "torch_free_service.py"
sys.path.insert(0, str(PROBE.parent))
from tamiyo_inputs import graph, signals  # noqa: E402

TOKEN = "registry-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny.pt`` (written by a tiny Simic job), ``broken.pt`` (not a torch file), ``bad name.pt`` (not listed)."""
    pytest.importorskip("torch_geometric")
    from esper.simic.env import EnvConfig
    from esper.simic.offline import OfflineConfig
    from esper.simic.ppo import PPOConfig
    from esper.simic.train import POLICY, TrainConfig, train
    from esper.tamiyo.gnn.network import NetworkConfig

    job = tmp_path_factory.mktemp("simic")
    config = TrainConfig(
        env=EnvConfig(epochs=2, pool=1, max_train_samples=100, samples=600),
        network=NetworkConfig(hidden=16),
        record_episodes=2,
        offline=OfflineConfig(epochs=1),
        ppo=PPOConfig(total_timesteps=2, num_steps=1, num_minibatches=1, update_epochs=1),
        num_envs=2,
        asynchronous=False,
    )
    train(config, job, progress=False)
    directory = tmp_path_factory.mktemp("policies")
    (directory / "tiny.pt").write_bytes((job / POLICY).read_bytes())
    (directory / "broken.pt").write_bytes(b"this is not a policy")
    (directory / "bad name.pt").write_bytes(b"")
    (directory / "heuristic.pt").write_bytes(b"")  # a named policy wins over a file of its name
    (directory / "learned.pt").write_bytes(b"")  # and so does the shipped learned policy
    return directory


# -- the registry itself ---------------------------------------------------------------------------------------


def test_the_registry_lists_named_policies_and_the_directorys_files(policy_dir):
    registry = PolicyRegistry(policy_dir)
    assert registry.names() == ("heuristic", "heuristic-per-slot", "none", "learned", "broken", "tiny")
    assert "tiny" in registry and "bad name" not in registry and "../tiny" not in registry
    assert PolicyRegistry(policy_dir / "missing").names() == ("heuristic", "heuristic-per-slot", "none", "learned")
    entries = {e.name: e for e in registry.entries()}
    assert entries["tiny"].kind == "learned" and entries["tiny"].available
    assert entries["tiny"].path == str(policy_dir / "tiny.pt")
    assert entries["heuristic"].kind == "named" and entries["heuristic"].path is None
    # the learned policy that ships with Esper; a file of its name in the directory does not replace it
    assert entries["learned"].kind == "learned" and entries["learned"].path == str(SHIPPED_POLICIES["learned"])


def test_the_registry_builds_learned_policies_and_names_what_it_refuses(policy_dir, monkeypatch):
    registry = PolicyRegistry(policy_dir)
    policy = registry.make("tiny", TrainingJob(epochs=7))
    assert policy.name == "gnn" and policy.config.epochs_total == 7  # type: ignore[attr-defined]
    shipped = registry.make("learned", TrainingJob(epochs=9))
    assert shipped.name == "gnn" and shipped.config.epochs_total == 9  # type: ignore[attr-defined]
    with pytest.raises(PolicyRefused, match=r"policy 'broken'.*not a readable policy file"):
        registry.make("broken", TrainingJob())
    known = "known: heuristic, heuristic-per-slot, none, learned, broken, tiny"
    with pytest.raises(PolicyRefused, match=rf"unknown policy 'nope'.*{known}"):
        registry.check("nope")
    monkeypatch.setattr(registry_module, "missing_gnn_extra", lambda: "torch is not installed")
    with pytest.raises(PolicyRefused, match=r"policy 'tiny' is a learned policy and needs the gnn extra"):
        registry.check("tiny")
    registry.check("heuristic")  # named policies need nothing
    assert not {e.name: e for e in registry.entries()}["tiny"].available


# -- the real service ------------------------------------------------------------------------------------------


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    out: Path
    err: Path

    def wait_for(self, check: Callable[[], object], what: str, timeout_s: float = 60.0) -> object:
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

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit 30 s after SIGTERM:\n{self.err.read_text()[-6000:]}") from None
        assert rc == 0, self.err.read_text()[-4000:]
        return self.out.read_text()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(redis_url: str, policy_dir: Path, *, torch_free: bool = False) -> Service:
        port = free_port()
        out, err = tmp_path / f"tamiyo-{port}.out", tmp_path / f"tamiyo-{port}.err"
        entry = [str(PROBE), "serve"] if torch_free else ["-m", "esper.tamiyo.service"]
        args = ["--redis-url", redis_url, "--port", str(port), "--consumer", "tamiyo-registry"]
        env = {**os.environ, "ESPER_API_TOKEN": TOKEN, "ESPER_POLICY_DIR": str(policy_dir)}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, *entry, *args], stdout=stdout, stderr=stderr, cwd=ROOT, env=env)
        service = Service(proc, f"http://127.0.0.1:{port}", out, err)
        started.append(service)
        service.wait_for(lambda: httpx.get(service.url + "/readyz").status_code == 200, "the service to be ready")
        return service

    yield start
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=30)


def publish(redis_url: str, run_id: str, *messages: object) -> None:
    async def go() -> None:
        bus = RedisBus.from_url(redis_url)
        try:
            for message in messages:
                stream = ls.CONTROL_JOBS if isinstance(message, TrainingJob) else ls.TELEMETRY_TRAINING
                await bus.publish(stream, Envelope(payload=message, run_id=run_id))
        finally:
            await bus.aclose()

    asyncio.run(go())


def decisions(redis_url: str, run_id: str) -> list[AdaptationDecision]:
    found = [e.payload for e in published(redis_url, ls.CONTROL_DECISIONS) if e.run_id == run_id]
    return [d for d in found if isinstance(d, AdaptationDecision)]


def decided(service: Service, redis_url: str, run_id: str, epoch: int) -> AdaptationDecision:
    def find() -> AdaptationDecision | None:
        return next((d for d in decisions(redis_url, run_id) if d.epoch == epoch), None)

    return service.wait_for(find, f"the decision on epoch {epoch}")  # type: ignore[return-value]


def switch(service: Service, run_id: str, name: str) -> httpx.Response:
    return httpx.put(f"{service.url}/runs/{run_id}/policy", json={"policy": name}, headers=AUTH, timeout=60)


def reason(response: httpx.Response) -> str:
    return " ".join(f"{e['loc']} {e['msg']}" for e in response.json()["detail"])


@pytest.mark.slow
def test_a_live_run_switches_to_a_registered_learned_policy(clean_redis_url, policy_dir, start_service, monkeypatch):
    service = start_service(clean_redis_url, policy_dir)
    listed = httpx.get(f"{service.url}/policies", headers=AUTH).json()
    assert [(p["name"], p["kind"], p["available"]) for p in listed] == [
        ("heuristic", "named", True), ("heuristic-per-slot", "named", True), ("none", "named", True),
        ("learned", "learned", True), ("broken", "learned", True), ("tiny", "learned", True),
    ]  # fmt: skip
    publish(clean_redis_url, "run-r", TrainingJob(epochs=5), graph(), signals(1))
    assert decided(service, clean_redis_url, "run-r", 1).policy == "heuristic"

    # the operator's CLI: list, then switch the live run
    monkeypatch.setenv("ESPER_API_TOKEN", TOKEN)
    assert main(["runs", "--api", service.url, "policies"]) == 0
    assert main(["runs", "--api", service.url, "policy", "run-r", "tiny"]) == 0
    body = httpx.get(f"{service.url}/runs/run-r", headers=AUTH).json()
    assert body["policy"] == "tiny" and body["error"] is None
    publish(clean_redis_url, "run-r", signals(2))
    second = decided(service, clean_redis_url, "run-r", 2)
    assert second.policy == "gnn" and second.reason.startswith("gnn: ")  # the learned policy decided epoch 2

    # refused switches name the policy and leave the run with the one it has
    broken = switch(service, "run-r", "broken")
    assert broken.status_code == 422 and "'broken'" in reason(broken) and "policy" in reason(broken)
    unknown = switch(service, "run-r", "nope")
    assert unknown.status_code == 422 and "unknown policy 'nope'" in reason(unknown)
    assert httpx.get(f"{service.url}/runs/run-r", headers=AUTH).json()["policy"] == "tiny"
    publish(clean_redis_url, "run-r", signals(3))
    assert decided(service, clean_redis_url, "run-r", 3).policy == "gnn"

    # a run may also be submitted with a registered policy
    submitted = httpx.post(f"{service.url}/runs", json={"run_id": "run-s", "policy": "tiny"}, headers=AUTH)
    assert submitted.status_code == 202, submitted.text
    assert service.stop() == ""


@pytest.mark.slow
def test_without_torch_the_switch_is_a_422_naming_the_policy_and_the_extra(clean_redis_url, policy_dir, start_service):
    service = start_service(clean_redis_url, policy_dir, torch_free=True)
    listed = {p["name"]: p for p in httpx.get(f"{service.url}/policies", headers=AUTH).json()}
    assert listed["tiny"]["available"] is False and "gnn extra" in listed["tiny"]["reason"]
    assert listed["learned"]["available"] is False  # the shipped learned policy needs the extra too
    assert listed["heuristic"]["available"] is True
    publish(clean_redis_url, "run-t", TrainingJob(epochs=5), graph(), signals(1))
    assert decided(service, clean_redis_url, "run-t", 1).policy == "heuristic"

    refused = switch(service, "run-t", "tiny")
    assert refused.status_code == 422
    why = reason(refused)
    assert "policy 'tiny'" in why and "gnn extra" in why and "esper-tamiyo[gnn]" in why
    submitted = httpx.post(f"{service.url}/runs", json={"policy": "tiny"}, headers=AUTH)
    assert submitted.status_code == 422 and "gnn extra" in reason(submitted)

    # the service is up and the run keeps its policy, deciding the next epoch
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert httpx.get(f"{service.url}/runs/run-t", headers=AUTH).json()["policy"] == "heuristic-per-slot"
    publish(clean_redis_url, "run-t", signals(2))
    assert decided(service, clean_redis_url, "run-t", 2).policy == "heuristic"
    report = json.loads(service.stop().strip().splitlines()[-1])
    assert report["imported"] == []  # torch was never loaded ...
    assert "torch" in report["refused"]  # ... though the registry did ask whether it could be
