"""The compose cluster as ``make compose-test`` and ``make compose-chaos`` drive it.

:class:`Cluster` does what both share: a Docker Engine (reused, or installed and started), the
stand-ins for upstream base images no registry gives here, every service image, free ports, an
env file with fresh secrets (the API token, one Redis ACL password per service, the Redis
admin's), ``deploy/docker-compose.yml`` merged with the host-network override, ``up`` and the
wait for every container to be healthy, and the teardown (``down -v``, and the engine if this
run started it). :func:`main` runs a subclass's ``main()`` under one deadline and prints a JSON
summary last.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import standins
from engine import Engine, EngineError, docker_client
from harness import ROOT, Deadline, Shell, StepFailed, Timeline, get_json, get_text
from images import SERVICES, Images

DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
#: Containers started here; Grafana has no image on this machine (see compose_test's docstring).
STARTED = ("redis", "postgres", *SERVICES, "prometheus")
PORT_VARS = ("REDIS_PORT", "POSTGRES_PORT", *(f"{s.upper()}_PORT" for s in SERVICES), "PROMETHEUS_PORT", "GRAFANA_PORT")
#: The Redis ACL users (deploy/k8s/esper/files/redis/users.acl) whose passwords the env file sets.
REDIS_USERS = ("admin", "tamiyo", "tolaria", "nissa", "tezzeret")
SCRAPE_INTERVAL_S = 2


class Cluster:
    def __init__(self, workdir: Path, timeline: Timeline, deadline_s: float, name: str = "espertest") -> None:
        self.workdir = workdir
        self.t = timeline
        self.sh = Shell(workdir / "logs", deadline_s)
        self.engine = Engine(workdir)
        self.docker = ""
        self.images: Images | None = None
        self.project = f"{name}{os.getpid()}"
        self.env_file = workdir / "compose.env"
        self.ports: dict[str, int] = {}
        self.token = secrets.token_urlsafe(24)
        self.redis_passwords = {user: secrets.token_urlsafe(18) for user in REDIS_USERS}
        self.up = False

    # -- helpers -------------------------------------------------------------------------------
    def compose(self, *args: str, merged: bool = True) -> list[str]:
        """docker-compose on the merged file (see :meth:`configure`), or on the two source files."""
        files = (
            [self.workdir / "compose.merged.yml"]
            if merged
            else [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.host.yml"]
        )
        flags = [arg for f in files for arg in ("-f", str(f))]
        return ["docker-compose", "-p", self.project, "--env-file", str(self.env_file), *flags, *args]

    def container(self, service: str) -> str:
        """The id of ``service``'s container."""
        return self.sh.output(self.compose("ps", "-q", service)).strip()

    def api(self, path: str) -> Any:
        return get_json(f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}{path}", token=self.token)

    def redis(self, user: str = "admin") -> Any:
        """A redis-py client on the cluster's Redis as ``user`` (an ACL user; admin by default)."""
        import redis

        port, password = self.ports["REDIS_PORT"], self.redis_passwords[user]
        return redis.Redis(host="127.0.0.1", port=port, username=user, password=password, socket_timeout=10.0)

    def metric_sum(self, port: int, name: str, label: str = "", exclude: tuple[str, ...] = ()) -> float:
        """Sum of a metric's samples on a service's /metrics: those containing ``label`` and none of ``exclude``."""
        total = 0.0
        for line in get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
            if not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            if label in line and not any(e in line for e in exclude):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def prom(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        answer = get_json(url)
        if answer.get("status") != "success":
            raise StepFailed(f"Prometheus {path} {params}: {answer}")
        return answer["data"]

    def states(self) -> dict[str, dict[str, Any]]:
        """``docker inspect`` of every container of the project, by compose service name."""
        ids = self.sh.output(self.compose("ps", "-q")).split()
        out = {}
        for c in json.loads(self.sh.output([self.docker, "inspect", *ids])):
            out[c["Config"]["Labels"].get("com.docker.compose.service", c["Name"])] = c
        return out

    # -- steps ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        with self.t.step("engine") as note:
            try:
                note(self.engine.ensure(timeout_s=min(90.0, self.sh.remaining())))
            except EngineError as exc:
                raise StepFailed(f"no Docker Engine can run here: {exc}") from None
            self.docker = docker_client()
            note(self.sh.output([self.docker, "version", "--format", "server {{.Server.Version}}"]).strip())
            note("docker-compose " + self.sh.output(["docker-compose", "version", "--short"]).strip())
        with self.t.step("base image") as note:
            note(standins.ensure_base(self.docker, self.sh.run, self.workdir))
        with self.t.step("stand-in images") as note:
            for line in standins.ensure_standins(self.docker, self.sh.run, self.workdir, list(standins.STANDINS)):
                note(line)
        self.images = Images(self.sh, self.docker, VENV_BIN / "pip")
        self.images.build(self.t.step)
        with self.t.step("image contents") as note:
            for line in self.images.check():
                note(line)

    def configure(self) -> None:
        """Free ports, the env file, Prometheus' config on those ports, and the merged compose file."""
        socks = []
        for var in PORT_VARS:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            self.ports[var] = s.getsockname()[1]
        for s in socks:
            s.close()
        import yaml

        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self.ports[job['job_name'].upper() + '_PORT']}"]}]
        prom = self.workdir / "prometheus.host.yml"
        prom.write_text(yaml.safe_dump(config, sort_keys=False))
        prom.chmod(0o644)
        lines = [f"{k}={v}" for k, v in self.ports.items()]
        lines += [f"REDIS_{user.upper()}_PASSWORD={pw}" for user, pw in self.redis_passwords.items()]
        lines += [
            f"ESPER_API_TOKEN={self.token}",
            f"POSTGRES_PASSWORD={secrets.token_urlsafe(16)}",
            f"GRAFANA_ADMIN_PASSWORD={secrets.token_urlsafe(16)}",
            f"PROMETHEUS_HOST_CONFIG={prom}",
            "ESPER_TOLARIA_TORCH_THREADS=1",
        ]
        self.env_file.write_text("\n".join(lines) + "\n")
        self.t.say("ports: " + ", ".join(f"{k.removesuffix('_PORT').lower()} {v}" for k, v in self.ports.items()))
        # With host networking a published port means nothing (the Docker API would discard it), but
        # docker-compose v1 refuses the combination and an override cannot delete a key: so the
        # merged config (`docker-compose config` of both files) drops `ports` on the host network.
        merged = yaml.safe_load(self.sh.output(self.compose("config", merged=False)))
        for service in merged["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        (self.workdir / "compose.merged.yml").write_text(yaml.safe_dump(merged, sort_keys=False))

    def start(self) -> None:
        with self.t.step("compose up") as note:
            self.up = True
            self.sh.run(self.compose("up", "-d", "--no-build", *STARTED), log_name="compose", timeout_s=240)
            note(f"project {self.project}: {' '.join(STARTED)} (grafana: no image here)")
        with self.t.step("healthy") as note:
            self.wait_healthy()
            note(f"{len(STARTED)} containers healthy")

    def wait_healthy(self, timeout_s: float = 180) -> None:
        def health() -> bool:
            summary = {
                n: c["State"].get("Health", {}).get("Status", c["State"]["Status"]) for n, c in self.states().items()
            }
            dead = [n for n, s in summary.items() if s in ("exited", "dead")]
            if dead:
                raise StepFailed(f"containers exited: {dead}")
            return len(summary) == len(STARTED) and all(s == "healthy" for s in summary.values())

        self.sh.wait_for("every container healthy", health, timeout_s=timeout_s, every_s=2)

    def teardown(self, failed: bool) -> None:
        if self.images is not None:
            self.images.remove_links()
        end = time.monotonic() + 120
        if self.up:
            with self.t.step("compose down") as note:
                if failed:
                    for args in (("ps",), ("logs", "--no-color", "--tail", "60")):
                        subprocess.run(self.compose(*args), cwd=ROOT, timeout=60, check=False)
                try:
                    subprocess.run(
                        self.compose("down", "-v", "--remove-orphans", "-t", "10"),
                        cwd=ROOT,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.STDOUT,
                        timeout=max(10.0, end - time.monotonic()),
                        check=False,
                    )
                    note("containers and volumes removed")
                except subprocess.TimeoutExpired:
                    note("docker-compose down timed out")
        with self.t.step("engine stop") as note:
            note(self.engine.stop(timeout_s=max(10.0, min(30.0, end - time.monotonic()))))

    def main(self) -> dict[str, Any]:
        """The run's own steps (a subclass's); what it returns joins the final JSON line."""
        raise StepFailed(f"{type(self).__name__} has no steps")


def main(make: Callable[[Path, Timeline, float], Cluster], name: str, default_limit_s: float) -> int:
    """Run ``make(workdir, timeline, limit).main()``, tear down on every exit, print the JSON summary."""
    skip = f"ESPER_SKIP_{name.upper().replace('-', '_')}"
    if os.environ.get(skip) == "1":
        print(f"{name}: SKIPPED because {skip}=1 (no cluster was started or checked)")
        return 0
    timeline = Timeline()
    limit = float(os.environ.get(f"{skip.replace('SKIP_', '')}_TIMEOUT_S", str(default_limit_s)))
    workdir = Path(tempfile.mkdtemp(prefix=f"esper-{name}-"))
    cluster = make(workdir, timeline, limit)
    timeline.say(f"{name}: limit {limit:.0f} s, work dir {workdir}")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    failed: str | None = None
    result: dict[str, Any] = {}
    try:
        result = cluster.main() or {}
    except Deadline:
        failed = f"the overall limit of {limit:.0f} s passed"
    except subprocess.TimeoutExpired as exc:
        failed = f"the overall limit of {limit:.0f} s passed during `{' '.join(map(str, exc.cmd))[:120]}`"
    except StepFailed as exc:
        failed = str(exc)
    except KeyboardInterrupt as exc:
        failed = f"interrupted ({exc})"
    except Exception as exc:  # anything unexpected still tears down, and is reported with its type
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            cluster.teardown(failed is not None)
        except Exception as exc:
            timeline.say(f"teardown error: {type(exc).__name__}: {exc}")
    total = time.monotonic() - timeline.t0
    if failed:
        timeline.say(f"{name} FAILED: {failed}")
        timeline.say(f"logs kept in {cluster.sh.logs}")
    else:
        timeline.say(f"{name} passed in {total:.1f}s")
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"passed": failed is None, "total_s": round(total, 1), "steps_s": timeline.steps, **result}))
    return 1 if failed else 0
