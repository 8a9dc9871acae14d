"""``make compose-test``: start the compose cluster with a real Docker Engine, train a run through it, tear it down.

Steps (each printed with its duration): a Docker Engine (reused, or installed and started),
local stand-ins for the upstream base images no registry can give here, every service image
(no torch in Tamiyo and Nissa, non-root everywhere), ``deploy/docker-compose.yml`` plus the
host-network override on free ports, health of every container, a short job submitted with
``esper runs submit`` through Tamiyo's control API, an illegal adaptation forced (the safety
monitor's 409) and one undecodable message published (a dead letter) so the rejection and
dead-letter panels have something to show, the run's report copied out of the runs volume,
Nissa's decision count against Tamiyo's, the real Prometheus scraping every service, and every
dashboard query returning data. Teardown (``down -v``, and the engine if this run started it)
happens on every exit.

Grafana's image is not in any registry this machine reaches, so it is not started here; its
dashboards are checked offline by ``tests/deploy`` and their queries run here against Prometheus.

``ESPER_SKIP_COMPOSE_TEST=1`` skips everything (and says so); nothing else skips silently.
``ESPER_COMPOSE_TEST_TIMEOUT_S`` (default 780) bounds the run; teardown has its own 120 s.
The last line is JSON with every step's seconds.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboards
import standins
from engine import Engine, EngineError, docker_client
from harness import ROOT, Deadline, Shell, StepFailed, Timeline, get_json, get_text, post_json
from images import SERVICES, Images

DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
#: Containers started here; Grafana has no image on this machine (see the module docstring).
STARTED = ("redis", "postgres", *SERVICES, "prometheus")
PORT_VARS = ("REDIS_PORT", "POSTGRES_PORT", *(f"{s.upper()}_PORT" for s in SERVICES), "PROMETHEUS_PORT", "GRAFANA_PORT")
EPOCHS = int(os.environ.get("ESPER_COMPOSE_TEST_EPOCHS", "8"))
SCRAPE_INTERVAL_S = 2


class ComposeTest:
    def __init__(self, workdir: Path, timeline: Timeline, deadline_s: float) -> None:
        self.workdir = workdir
        self.t = timeline
        self.sh = Shell(workdir / "logs", deadline_s)
        self.engine = Engine(workdir)
        self.docker = ""
        self.images: Images | None = None
        self.project = f"espertest{os.getpid()}"
        self.env_file = workdir / "compose.env"
        self.ports: dict[str, int] = {}
        self.token = secrets.token_urlsafe(24)
        self.up = False
        self.run_started = 0.0

    # -- helpers -------------------------------------------------------------------------------
    def compose(self, *args: str, merged: bool = True) -> list[str]:
        """docker-compose on the merged file (see :meth:`merge`), or on the two source files."""
        files = (
            [self.workdir / "compose.merged.yml"]
            if merged
            else [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.host.yml"]
        )
        flags = [arg for f in files for arg in ("-f", str(f))]
        return ["docker-compose", "-p", self.project, "--env-file", str(self.env_file), *flags, *args]

    def api(self, path: str) -> Any:
        return get_json(f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}{path}", token=self.token)

    def esper(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``esper runs --api <tamiyo> ARGS`` with the cluster's token (the CLI users run)."""
        cmd = [str(VENV_BIN / "esper"), "runs", "--api", f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}", *args]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=min(60.0, self.sh.remaining()),
            env={**os.environ, "ESPER_API_TOKEN": self.token},
            check=False,
        )
        if check and done.returncode != 0:
            raise StepFailed(f"`esper runs {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

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

            def health() -> bool:
                ids = self.sh.output(self.compose("ps", "-q")).split()
                states = json.loads(self.sh.output([self.docker, "inspect", *ids]))
                summary = {
                    c["Name"].lstrip("/"): c["State"].get("Health", {}).get("Status", c["State"]["Status"])
                    for c in states
                }
                dead = [n for n, s in summary.items() if s in ("exited", "dead")]
                if dead:
                    raise StepFailed(f"containers exited: {dead}")
                return len(summary) == len(STARTED) and all(s == "healthy" for s in summary.values())

            self.sh.wait_for("every container healthy", health, timeout_s=180, every_s=2)
            note(f"{len(STARTED)} containers healthy")

    def train(self) -> dict[str, Any]:
        with self.t.step("run submitted") as note:
            self.run_started = time.time()
            run_id = json.loads(self.esper("--json", "submit", "--epochs", str(EPOCHS), "--seed", "0").stdout)["run_id"]
            note(f"esper runs submit -> {run_id} ({EPOCHS} epochs)")
        with self.t.step("forced rejection and a dead letter") as note:
            status = self.sh.wait_for(
                "the run's slots", lambda: (s := self.api(f"/runs/{run_id}"))["slots"] and s, timeout_s=180, every_s=0.3
            )
            if status["finished"]:
                raise StepFailed(f"run {run_id} finished before an adaptation could be forced")
            # Paused (over HTTP, at once) so the run is still live, and early, when the slower CLI asks.
            base = f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}/runs/{run_id}"
            post_json(f"{base}/pause", {"reason": "compose-test forces an illegal adaptation"}, self.token)
            slot = status["slots"][0]
            # Fossilizing is legal only from PROBATIONARY, which no slot reaches in the first epochs.
            args = ["--action", "fossilize", "--slot", slot["slot_id"]]
            refused = self.esper("adapt", run_id, *args, check=False)
            post_json(f"{base}/resume", {"reason": "compose-test"}, self.token)
            if refused.returncode != 1 or "409" not in refused.stderr or "illegal" not in refused.stderr:
                raise StepFailed(f"`esper runs adapt {' '.join(args)}` was not refused as illegal: {refused.stderr}")
            note(f"paused; {refused.stderr.strip()[:150]}; resumed")
            import redis

            from esper.leyline import streams

            client = redis.Redis(host="127.0.0.1", port=self.ports["REDIS_PORT"])
            client.xadd(streams.TELEMETRY_TRAINING, {streams.ENVELOPE_FIELD: b"\x00 not msgpack"})
            client.close()
            note("one undecodable entry on the training stream")
        with self.t.step("run finished") as note:
            final = self.sh.wait_for(
                "the run to finish",
                lambda: (s := self.api(f"/runs/{run_id}"))["finished"] and s,
                timeout_s=300,
                every_s=1,
            )
            note(f"{final['epoch']} epochs, val acc {final['val_accuracy']:.3f}, params {final['params_total']}")
        return dict(final)

    def check_run(self, final: dict[str, Any]) -> None:
        with self.t.step("report copied out") as note:
            path = final["outcome"].get("report")
            if not path:
                raise StepFailed(f"run_finished carries no report path: {final['outcome']}")
            container = self.sh.output(self.compose("ps", "-q", "tolaria")).strip()
            out = self.workdir / "report.json"
            self.sh.output([self.docker, "cp", f"{container}:{path}", str(out)])
            report = json.loads(out.read_text())
            if report["epochs"] != EPOCHS:
                raise StepFailed(f"report has {report['epochs']} epochs, expected {EPOCHS}")
            note(
                f"{path}: final test accuracy {report['final_test_accuracy']:.3f}, "
                f"{len(report['seed_events'])} seed events, {report['params_final']} parameters"
            )
        with self.t.step("nissa counted the decisions") as note:

            def counts() -> tuple[float, float] | None:
                # Pause and resume are counted by Tamiyo but sent as commands, not decisions.
                run_control = tuple(f'action="{a}"' for a in ("pause", "resume", "stop"))
                tamiyo = self.metric_sum(self.ports["TAMIYO_PORT"], "esper_tamiyo_decisions_total", exclude=run_control)
                nissa = self.metric_sum(
                    self.ports["NISSA_PORT"], "esper_decisions_total", f'run_id="{final["run_id"]}"'
                )
                return (tamiyo, nissa) if tamiyo > 0 and tamiyo == nissa else None

            tamiyo, nissa = self.sh.wait_for("Nissa's decision count to equal Tamiyo's", counts, timeout_s=30)
            note(f"Tamiyo decided {tamiyo:.0f} times (one forced, refused), Nissa counted {nissa:.0f}")

    def check_prometheus(self) -> None:
        with self.t.step("prometheus scraped every service") as note:

            def all_up() -> list[str] | None:
                up = {r["metric"]["job"]: r["value"][1] for r in self.prom("query", query="up")["result"]}
                return sorted(up) if all(up.get(s) == "1" for s in SERVICES) else None

            note("up == 1 for " + ", ".join(self.sh.wait_for("up == 1 for every service", all_up, timeout_s=30)))
        with self.t.step("every dashboard query returns data") as note:
            time.sleep(2 * SCRAPE_INTERVAL_S + 1)  # the final counters scraped at least twice
            queries = [q for f in dashboards.dashboard_files() for q in dashboards.queries(f)]
            empty = []
            for q in queries:
                data = self.prom(
                    "query_range",
                    query=q.resolved(),
                    start=f"{self.run_started - 5:.0f}",
                    end=f"{time.time():.0f}",
                    step=f"{SCRAPE_INTERVAL_S}",
                )
                finite = [v for r in data["result"] for _, v in r["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if not finite:
                    empty.append(f"{q.dashboard}: {q.where}: {q.resolved()}")
            if empty:
                raise StepFailed("dashboard queries with no data after the run:\n  " + "\n  ".join(empty))
            note(f"{len(queries)} queries in {len(dashboards.dashboard_files())} dashboards, each with data")

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

    def main(self) -> None:
        self.prepare()
        self.configure()
        self.start()
        final = self.train()
        self.check_run(final)
        self.check_prometheus()


def main() -> int:
    if os.environ.get("ESPER_SKIP_COMPOSE_TEST") == "1":
        print("compose-test: SKIPPED because ESPER_SKIP_COMPOSE_TEST=1 (no cluster was started or checked)")
        return 0
    timeline = Timeline()
    limit = float(os.environ.get("ESPER_COMPOSE_TEST_TIMEOUT_S", "780"))
    workdir = Path(tempfile.mkdtemp(prefix="esper-compose-test-"))
    test = ComposeTest(workdir, timeline, limit)
    timeline.say(f"compose-test: limit {limit:.0f} s, work dir {workdir}")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    failed: str | None = None
    try:
        test.main()
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
            test.teardown(failed is not None)
        except Exception as exc:
            timeline.say(f"teardown error: {type(exc).__name__}: {exc}")
    total = time.monotonic() - timeline.t0
    if failed:
        timeline.say(f"compose-test FAILED: {failed}")
        timeline.say(f"logs kept in {test.sh.logs}")
    else:
        timeline.say(f"compose-test passed in {total:.1f}s")
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"passed": failed is None, "total_s": round(total, 1), "steps_s": timeline.steps}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
