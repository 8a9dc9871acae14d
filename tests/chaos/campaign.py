"""A chaos campaign: real services train several runs while faults hit them at seeded random moments.

The stack is Tamiyo, Tolaria (one or more replicas) and Nissa as supervised
subprocesses (:class:`esper.cli.stack.Stack`, restarting the dead as ``esper
up`` does) on a private ``redis-server`` with the append-only file on
(``appendfsync always``). Each service reaches Redis through its own
:class:`CuttableProxy`, so one service's connection can be cut alone.

Faults, in an order and at moments drawn from ``random.Random(seed)``:

* ``kill <service>``: SIGKILL, each service in turn (the supervisor restarts it);
* ``redis restart``: SIGKILL redis-server, a short outage, start it on its AOF;
* ``long redis outage``: the same, down longer than the control API's deadline
  and the bus's publish timeout (the API must answer 503, Tolaria resumes);
* ``cut <service>``: drop that service's Redis connections for a few seconds;
* during each outage, a run is submitted and a running run paused through the
  API (every answer recorded; a pause is resumed once Redis is back);
* ``poison``: undecodable bytes on the training stream;
* ``maxlen flood``: the health stream pushed past its ``MAXLEN``.

:func:`run_campaign` returns the faults injected and :mod:`checks`' verdict.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from redis_server import RedisServer, free_ports  # tests/ is on sys.path (tests/conftest.py)

from esper.cli.stack import RestartPolicy, ServiceSpec, Stack, default_specs
from esper.leyline import Envelope, LayerHealth, encode
from esper.leyline import streams as ls

from .checks import RUN_FINISHED, Verdict, read_stream, verify
from .proxy import CuttableProxy

TOKEN = "chaos-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVICES = ("tamiyo", "tolaria", "nissa")
FLOOD_RUN = "chaos-flood"
_FIELD = ls.ENVELOPE_FIELD.encode()


@dataclass(frozen=True)
class CampaignConfig:
    """How big a campaign is. :meth:`bounded` is the one ``make test`` runs, :meth:`full` ``make chaos``."""

    seed: int = 14
    runs: int = 3
    epochs: int = 6
    max_train_samples: int = 300
    tolarias: int = 1
    kill_rounds: int = 1
    redis_restarts: int = 1
    long_outages: int = 1
    long_outage_s: float = 7.0
    cuts: int = 1
    poison: int = 2
    flood: bool = False
    outage_s: tuple[float, float] = (1.0, 2.5)
    gap_s: tuple[float, float] = (0.5, 3.0)
    finish_timeout_s: float = 420.0

    @classmethod
    def bounded(cls, seed: int = 14) -> CampaignConfig:
        return cls(seed=seed)

    @classmethod
    def full(cls, seed: int = 14) -> CampaignConfig:
        return cls(
            seed=seed, runs=6, epochs=10, tolarias=2, kill_rounds=2, redis_restarts=2, cuts=3, poison=4, flood=True
        )

    def job(self) -> dict[str, Any]:
        return {
            "task": "mnist1d",
            "policy": "heuristic",
            "epochs": self.epochs,
            "max_train_samples": self.max_train_samples,
            "lr": 0.0003,
            "lr_schedule": "constant",
            "lockstep": True,
            "lockstep_timeout_ms": 2000,
        }


@dataclass
class Fault:
    kind: str
    at_s: float
    runs_affected: list[str]
    detail: str = ""


@dataclass
class Campaign:
    config: CampaignConfig
    faults: list[Fault] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    poison_entries: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    wall_s: float = 0.0
    logs: str = ""
    crashes: dict[str, int] = field(default_factory=dict)


class _Driver:
    def __init__(self, config: CampaignConfig, root: Path) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.root = root
        self.campaign = Campaign(config)
        self.server = RedisServer(root / "redis", durable=True)
        self.proxies: dict[str, CuttableProxy] = {}
        self.stack: Stack | None = None
        self.api: httpx.Client | None = None
        self.client: redis.Redis | None = None
        self.started = time.monotonic()
        self.finished: set[str] = set()
        self.last_answer = ""

    # --- setup -------------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        names = list(SERVICES) + [f"tolaria-{i}" for i in range(2, self.config.tolarias + 1)]
        self.proxies = {name: CuttableProxy(self.server.port).start() for name in names}
        ports = free_ports(names)
        specs = [
            ServiceSpec(s.name, s.module, s.port, ("--redis-url", self.proxies[s.name].url()))
            for s in default_specs(ports)
        ]
        specs += [
            ServiceSpec(name, "esper.tolaria.service", ports[name], ("--redis-url", self.proxies[name].url()))
            for name in names[len(SERVICES) :]
        ]
        env = {**os.environ, "ESPER_TOLARIA_TORCH_THREADS": "1"}
        self.stack = Stack(
            specs,
            redis_url=self.server.url,
            runs_dir=self.root / "runs",
            logs_dir=self.root / "logs",
            api_token=TOKEN,
            env=env,
            restart=RestartPolicy(max_restarts=50, backoff_s=0.2, max_backoff_s=2.0),
        ).start()
        self.stack.wait_ready(timeout_s=180)
        self.api = httpx.Client(base_url=self.stack["tamiyo"].url, headers=AUTH, timeout=30.0)
        self.client = redis.Redis.from_url(self.server.url, socket_timeout=10.0)

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        if self.stack is not None:
            self.stack.stop()
        for proxy in self.proxies.values():
            proxy.close()
        if self.client is not None:
            self.client.close()
        self.server.stop()

    # --- runs --------------------------------------------------------------------------------
    def submit(self, label: str) -> int:
        assert self.api is not None
        run_id = f"chaos-{label}-{uuid.uuid4().hex[:6]}"
        try:
            response = self.api.post("/runs", json={**self.config.job(), "run_id": run_id})
            status = response.status_code
        except httpx.HTTPError:
            status = 0  # no answer at all: counted as refused, checked like one
        answers = self.campaign.answers
        answers[f"submit {status}"] = answers.get(f"submit {status}", 0) + 1
        if status == 202:
            self.campaign.accepted[run_id] = self.config.epochs
        else:
            assert status in (0, 503), f"POST /runs answered {status}: {response.text}"
            assert status == 0 or "retry-after" in response.headers
            self.campaign.refused.append(run_id)
        return status

    def steer(self, action: str, run_id: str) -> int:
        assert self.api is not None
        try:
            response = self.api.post(f"/runs/{run_id}/{action}", json={"reason": "chaos"})
            status, self.last_answer = response.status_code, response.text[:300]
        except httpx.HTTPError as exc:
            status, self.last_answer = 0, repr(exc)
        key = f"{action} {status}"
        self.campaign.answers[key] = self.campaign.answers.get(key, 0) + 1
        return status

    def active(self) -> list[str]:
        self.poll_finished()
        return sorted(r for r in self.campaign.accepted if r not in self.finished)

    def poll_finished(self) -> None:
        assert self.client is not None
        try:
            for _, envelope in read_stream(self.client, ls.TELEMETRY_EVENTS):
                if envelope is not None and getattr(envelope.payload, "kind", None) == RUN_FINISHED:
                    self.finished.add(envelope.run_id)
        except redis.RedisError:
            pass

    def first_epoch_seen(self) -> bool:
        assert self.client is not None
        return any(
            e is not None and e.run_id in self.campaign.accepted and e.message_type == "training_signals"
            for _, e in read_stream(self.client, ls.TELEMETRY_TRAINING)
        )

    # --- faults ------------------------------------------------------------------------------
    def schedule(self) -> list[str]:
        c = self.config
        faults = [f"kill {s}" for _ in range(c.kill_rounds) for s in SERVICES]
        faults += ["redis restart"] * c.redis_restarts
        faults += ["long redis outage"] * c.long_outages
        faults += [f"cut {SERVICES[i % len(SERVICES)]}" for i in range(c.cuts)]
        faults += ["poison"] * c.poison
        faults += ["maxlen flood"] if c.flood else []
        kills = [f for f in faults if f.startswith("kill")]
        others = [f for f in faults if not f.startswith("kill")]
        self.rng.shuffle(others)
        # Kills keep their order (each service in turn); the rest fall between them at random.
        slots = sorted(self.rng.randrange(len(others) + 1) for _ in kills)
        for offset, (slot, kill) in enumerate(zip(slots, kills, strict=True)):
            others.insert(slot + offset, kill)
        return others

    def inject(self, kind: str) -> Fault:
        fault = Fault(kind, time.monotonic() - self.started, self.active())
        if kind.startswith("kill "):
            fault.detail = self._kill(kind.split()[1])
        elif kind == "redis restart":
            fault.detail = self._outage(kind, self.server.kill, self._restart_redis)
        elif kind == "long redis outage":
            fault.detail = self._outage(kind, self.server.kill, self._restart_redis, self.config.long_outage_s)
        elif kind.startswith("cut "):
            proxy = self.proxies[kind.split()[1]]
            fault.detail = self._outage(kind, proxy.cut, proxy.restore)
        elif kind == "poison":
            fault.detail = self._poison()
        elif kind == "maxlen flood":
            fault.detail = self._flood()
        self.campaign.faults.append(fault)
        return fault

    def _kill(self, name: str) -> str:
        assert self.stack is not None
        service = self.stack[name]
        old = service.pid
        service.signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while service.pid == old or service.readiness() is not None:
            assert time.monotonic() < deadline, f"{name} not back after SIGKILL:\n{service.log_tail()}"
            time.sleep(0.2)
        return f"pid {old} -> {service.pid}"

    def _restart_redis(self) -> None:
        self.server.start(timeout_s=30)

    def _outage(self, kind: str, down: Any, up: Any, outage_s: float | None = None) -> str:
        outage = outage_s if outage_s is not None else self.rng.uniform(*self.config.outage_s)
        target = self.rng.choice(self.active() or [None])  # type: ignore[list-item]
        down()
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            submitted = pool.submit(self.submit, "outage")
            paused = pool.submit(self.steer, "pause", target) if target else None
            time.sleep(max(0.0, outage - (time.monotonic() - began)))
            up()
            answers = [submitted.result()] + ([paused.result()] if paused else [])
        if target is not None:
            # Whatever the pause's answer, the run must go on: resume it (retrying while Redis settles).
            deadline = time.monotonic() + 60
            while self.steer("resume", target) not in (202, 409):
                assert time.monotonic() < deadline, (
                    f"resume of {target} never accepted: {self.last_answer}\n{self.logs()}"
                )
                time.sleep(0.5)
        return f"{outage:.1f}s down; submit/pause answered {answers}"

    def _poison(self) -> str:
        assert self.client is not None
        entry = self.client.xadd(ls.TELEMETRY_TRAINING, {_FIELD: os.urandom(40)})
        self.campaign.poison_entries.append(entry.decode())
        return f"entry {entry.decode()}"

    def _flood(self) -> str:
        assert self.client is not None
        maxlen = ls.maxlen_for(ls.TELEMETRY_HEALTH)
        data = encode(Envelope(payload=LayerHealth(epoch=0), run_id=FLOOD_RUN))
        total, batch = maxlen + maxlen // 5, 5000
        for start in range(0, total, batch):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(batch, total - start)):
                pipe.xadd(ls.TELEMETRY_HEALTH, {_FIELD: data}, maxlen=maxlen, approximate=True)
            pipe.execute()
        length = self.client.xlen(ls.TELEMETRY_HEALTH)
        assert length <= maxlen * 1.1, f"{ls.TELEMETRY_HEALTH} not trimmed: {length} entries"
        return f"{total} entries pushed, stream length {length} (MAXLEN ~{maxlen})"

    # --- the campaign ------------------------------------------------------------------------
    def run(self) -> Campaign:
        for i in range(self.config.runs):
            assert self.submit(f"run{i}") == 202
        deadline = time.monotonic() + 180
        while not self.first_epoch_seen():
            assert time.monotonic() < deadline, "no run trained an epoch"
            time.sleep(0.5)
        for kind in self.schedule():
            time.sleep(self.rng.uniform(*self.config.gap_s))
            self.inject(kind)
            assert self.stack is not None
            self.stack.wait_ready(timeout_s=120)
        deadline = time.monotonic() + self.config.finish_timeout_s
        while self.active():
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert self.api is not None and self.client is not None and self.stack is not None
        listed = self.api.get("/runs").json()
        self.campaign.verdict = verify(
            self.client,
            self.stack.runs_dir,
            self.campaign.accepted,
            self.campaign.refused,
            listed,
            self.campaign.poison_entries,
        )
        self.campaign.crashes = self.crashes()
        self.campaign.verdict.summary["service_crashes"] = sum(self.campaign.crashes.values())
        self.campaign.wall_s = time.monotonic() - self.started
        return self.campaign

    def crashes(self) -> dict[str, int]:
        """Exits no fault caused (anything but our SIGKILL), per service: a service must ride out an outage."""
        assert self.stack is not None
        out = {}
        for name, service in self.stack.services.items():
            text = service.log_path.read_text(errors="replace")
            exits = re.findall(rf"--- esper: {re.escape(name)} exited with code (-?\d+)", text)
            out[name] = sum(1 for code in exits if int(code) != -signal.SIGKILL)
        return out

    def logs(self) -> str:
        if self.stack is None:
            return ""
        return "\n".join(f"--- {n}\n{s.log_tail(2000)}" for n, s in self.stack.services.items())


def run_campaign(config: CampaignConfig, root: Path) -> Campaign:
    """Run one campaign under ``root`` (Redis data, runs, logs); the stack is stopped afterwards."""
    driver = _Driver(config, Path(root))
    try:
        driver.start()
        campaign = driver.run()
        campaign.logs = driver.logs()
        return campaign
    finally:
        driver.stop()
