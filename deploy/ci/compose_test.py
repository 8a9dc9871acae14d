"""``make compose-test``: start the compose cluster with a real Docker Engine, train a run through it, tear it down.

Steps (each printed with its duration): a Docker Engine (reused, or installed and started),
local stand-ins for the upstream base images no registry can give here, every service image,
``deploy/docker-compose.yml`` plus the host-network override on free ports, health of every
container, a short job submitted with ``esper runs submit`` through Tamiyo's control API, an
illegal adaptation forced (the safety monitor's 409) and one undecodable message published (a
dead letter) so the rejection and dead-letter panels have something to show, the run's report
copied out of the runs volume, Nissa's decision count against Tamiyo's, the real Prometheus
scraping every service, every dashboard query returning data, and no torch in the Nissa and
Tamiyo images. Teardown (``down -v``, the engine if this run started it) happens on every exit.

Grafana's image is not in any registry this machine reaches, so it is not started here; its
dashboards are checked offline by ``tests/deploy`` and their queries run here against Prometheus.

``ESPER_SKIP_COMPOSE_TEST=1`` skips everything (and says so); nothing else skips silently.
``ESPER_COMPOSE_TEST_TIMEOUT_S`` (default 780) bounds the whole run; teardown has its own 120 s.
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
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboards
import standins
from engine import Engine, EngineError, docker_client

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
SERVICES = ("tamiyo", "tolaria", "nissa")
#: Containers started here; Grafana has no image on this machine (see the module docstring).
STARTED = ("redis", "postgres", *SERVICES, "prometheus")
PORT_VARS = (
    "REDIS_PORT",
    "POSTGRES_PORT",
    "TAMIYO_PORT",
    "TOLARIA_PORT",
    "NISSA_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
)
EPOCHS = int(os.environ.get("ESPER_COMPOSE_TEST_EPOCHS", "6"))
SCRAPE_INTERVAL_S = 2


class StepFailed(RuntimeError):
    """A step failed; the message says what and where its log is."""


class Deadline(Exception):
    """The overall time limit passed."""


class Timeline:
    """Prints each step with the time since start and its duration; keeps them for the JSON summary."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.steps: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[str], None]]:
        start = time.monotonic()
        notes: list[str] = []
        self.say(f"{name} ...")
        try:
            yield notes.append
        finally:
            took = time.monotonic() - start
            self.steps[name] = round(took, 1)
            detail = f": {'; '.join(notes)}" if notes else ""
            self.say(f"{name} done in {took:.1f}s{detail}")


class ComposeTest:
    def __init__(self, workdir: Path, timeline: Timeline, deadline_s: float) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t = timeline
        self.deadline = time.monotonic() + deadline_s
        self.engine = Engine(workdir)
        self.docker = ""
        self.project = f"espertest{os.getpid()}"
        self.env_file = workdir / "compose.env"
        self.ports: dict[str, int] = {}
        self.token = secrets.token_urlsafe(24)
        self.wheel_links: list[Path] = []
        self.up = False

    # -- helpers -------------------------------------------------------------------------------
    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Deadline()
        return left

    def run(
        self,
        cmd: list[str],
        *,
        log_name: str,
        check: bool = True,
        env_extra: dict[str, str] | None = None,
        stdin: Any = None,
        timeout_s: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` with its output in logs/<log_name>.log; StepFailed with the log's tail when it fails."""
        log = self.logs / f"{log_name}.log"
        timeout = min(timeout_s or 1e9, self.remaining())
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=stdin,
                    text=True,
                    timeout=timeout,
                    env={**os.environ, **(env_extra or {})},
                    cwd=ROOT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise StepFailed(f"`{' '.join(cmd[:4])} ...` ran past {timeout:.0f} s; log {log}") from None
        if check and done.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise StepFailed(f"`{' '.join(cmd[:6])} ...` exited {done.returncode}; log {log}:\n{tail}")
        return done

    def output(self, cmd: list[str], timeout_s: float = 60.0) -> str:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=min(timeout_s, self.remaining()), cwd=ROOT, check=False
        )
        if done.returncode != 0:
            raise StepFailed(f"`{' '.join(cmd[:6])}` exited {done.returncode}: {done.stderr.strip()[-1500:]}")
        return done.stdout

    def compose(self, *args: str, merged: bool = True) -> list[str]:
        """docker-compose on the merged file (see :meth:`merge`), or on the two source files."""
        files = (
            [self.workdir / "compose.merged.yml"]
            if merged
            else [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.host.yml"]
        )
        return (
            ["docker-compose", "-p", self.project, "--env-file", str(self.env_file)]
            + [arg for f in files for arg in ("-f", str(f))]
            + list(args)
        )

    def merge(self) -> None:
        """``docker-compose config`` of the compose file plus the host override, without port bindings.

        With host networking a published port means nothing (the Docker API would discard it), but
        docker-compose v1 refuses the combination instead of ignoring it, and an override cannot
        delete a key, so the merged file drops ``ports`` from services on the host network.
        """
        import yaml

        merged = yaml.safe_load(self.output(self.compose("config", merged=False)))
        for service in merged["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        (self.workdir / "compose.merged.yml").write_text(yaml.safe_dump(merged, sort_keys=False))

    def get_json(self, url: str, timeout_s: float = 10.0) -> Any:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())

    def get_text(self, url: str, timeout_s: float = 10.0) -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode()

    def wait_for(self, what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
        """Call ``probe`` until it returns something truthy; StepFailed naming ``what`` and the last error."""
        end = time.monotonic() + min(timeout_s, self.remaining())
        last: object = None
        while time.monotonic() < end:
            try:
                value = probe()
                if value:
                    return value
                last = value
            except (OSError, ValueError, KeyError, StepFailed) as exc:
                last = exc
            time.sleep(every_s)
        raise StepFailed(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")

    def esper(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        api = f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}"
        cmd = [str(VENV_BIN / "esper"), "runs", "--api", api, *args]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=min(60.0, self.remaining()),
            env={**os.environ, "ESPER_API_TOKEN": self.token},
            check=False,
        )
        if check and done.returncode != 0:
            raise StepFailed(f"`esper runs {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

    # -- steps ---------------------------------------------------------------------------------
    def start_engine(self) -> None:
        with self.t.step("engine") as note:
            try:
                note(self.engine.ensure(timeout_s=min(90.0, self.remaining())))
            except EngineError as exc:
                raise StepFailed(f"no Docker Engine can run here: {exc}") from None
            self.docker = docker_client()
            note(self.output([self.docker, "version", "--format", "server {{.Server.Version}}"]).strip())
            note("docker-compose " + self.output(["docker-compose", "version", "--short"]).strip())

    def base_images(self) -> None:
        with self.t.step("base image") as note:
            note(standins.ensure_base(self.docker, self.run, self.workdir))
        with self.t.step("stand-in images") as note:
            for line in standins.ensure_standins(self.docker, self.run, self.workdir, list(standins.STANDINS)):
                note(line)

    def torch_wheel(self) -> Path | None:
        """This machine's torch CPU wheel (pip's find-links folders), to build images without a torch index."""
        folders = [f for f in os.environ.get("PIP_FIND_LINKS", "").split() if f]
        done = subprocess.run([str(VENV_BIN / "pip"), "config", "list"], capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            if "find-links" in line:
                folders += line.split("=", 1)[1].strip().strip("'\"").split()
        for folder in folders:
            for wheel in sorted(Path(folder).glob("torch-2.13.0+cpu-cp311-*.whl")) if Path(folder).is_dir() else []:
                return wheel
        return None

    def build_images(self) -> None:
        wheels = DEPLOY / "docker" / "wheels"
        wheel = self.torch_wheel()
        build_args = []
        if wheel is not None:
            link = wheels / wheel.name
            if not link.exists():
                try:
                    os.link(wheel, link)
                except OSError:
                    shutil.copy(wheel, link)
                self.wheel_links.append(link)
            build_args = ["--build-arg", "TORCH_INDEX_URL="]  # the wheel above, no torch index needed
        for svc in SERVICES:
            with self.t.step(f"image esper/{svc}") as note:
                self.run(
                    [
                        self.docker,
                        "build",
                        "--network",
                        "host",
                        *build_args,
                        "-f",
                        f"services/{svc}/Dockerfile",
                        "-t",
                        f"esper/{svc}:dev",
                        ".",
                    ],
                    log_name=f"build-{svc}",
                    env_extra={"DOCKER_BUILDKIT": "1"},
                )
                size = self.output([self.docker, "image", "inspect", "--format", "{{.Size}}", f"esper/{svc}:dev"])
                note(f"{int(size) / 1e6:.0f} MB" + (" (torch from this machine's wheel)" if wheel else ""))
        self.remove_wheel_links()

    def remove_wheel_links(self) -> None:
        for link in self.wheel_links:
            link.unlink(missing_ok=True)
        self.wheel_links.clear()

    def image_checks(self) -> None:
        with self.t.step("image contents") as note:
            carries_torch = {}
            for svc in SERVICES:
                done = subprocess.run(
                    [
                        self.docker,
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        "--entrypoint",
                        "python",
                        f"esper/{svc}:dev",
                        "-c",
                        "import os, importlib.util as u; print(os.getuid(), u.find_spec('torch') is not None)",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=min(60.0, self.remaining()),
                    check=False,
                )
                if done.returncode != 0:
                    raise StepFailed(f"esper/{svc}:dev cannot run python: {done.stderr.strip()[-800:]}")
                uid, torch = done.stdout.split()
                if uid == "0":
                    raise StepFailed(f"esper/{svc}:dev runs as root")
                carries_torch[svc] = torch == "True"
            if carries_torch["nissa"]:
                raise StepFailed("esper/nissa:dev carries torch")
            if not carries_torch["tolaria"]:
                raise StepFailed("esper/tolaria:dev has no torch")
            if (ROOT / "libs" / "tamiyo" / "pyproject.toml").exists():
                if carries_torch["tamiyo"]:
                    raise StepFailed("esper/tamiyo:dev carries torch although libs/tamiyo (the torch-free core) exists")
                note("no torch in tamiyo and nissa")
            else:
                note("no torch in nissa; tamiyo still carries torch (libs/tamiyo split not in this tree)")
            note("every image runs as a non-root user")

    def write_config(self) -> None:
        """Free ports, the env file, and Prometheus' config with targets on those ports."""
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
            name = job["job_name"].upper()
            port = self.ports[f"{name}_PORT"]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
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

    def start_cluster(self) -> None:
        with self.t.step("compose up") as note:
            self.up = True
            self.merge()
            self.run(self.compose("up", "-d", "--no-build", *STARTED), log_name="compose", timeout_s=240)
            note(f"project {self.project}: {' '.join(STARTED)} (grafana: no image here)")
        with self.t.step("healthy") as note:

            def health() -> bool:
                ids = self.output(self.compose("ps", "-q")).split()
                states = json.loads(self.output([self.docker, "inspect", *ids]))
                summary = {
                    c["Name"].lstrip("/"): c["State"].get("Health", {}).get("Status", c["State"]["Status"])
                    for c in states
                }
                dead = [n for n, s in summary.items() if s in ("exited", "dead")]
                if dead:
                    raise StepFailed(f"containers exited: {dead}")
                return len(summary) == len(STARTED) and all(s == "healthy" for s in summary.values())

            self.wait_for("every container healthy", health, timeout_s=180, every_s=2)
            note(f"{len(STARTED)} containers healthy")

    def train(self) -> dict[str, Any]:
        with self.t.step("run submitted") as note:
            done = self.esper("--json", "submit", "--epochs", str(EPOCHS), "--seed", "0")
            run_id = json.loads(done.stdout)["run_id"]
            note(f"esper runs submit -> run {run_id} ({EPOCHS} epochs)")
            self.run_started = time.time()
        with self.t.step("first epoch") as note:
            status = self.wait_for(
                "epoch 1",
                lambda: self.status(run_id) if (self.status(run_id)["epoch"] or 0) >= 1 else None,
                timeout_s=180,
            )
            note(f"epoch {status['epoch']} val acc {status['val_accuracy']}")
        with self.t.step("forced rejection and a dead letter") as note:
            dormant = next((s["slot_id"] for s in status["slots"] if s["stage"] == "DORMANT"), None)
            if dormant is not None and not status["finished"]:
                refused = self.esper("adapt", run_id, "--action", "advance", "--slot", dormant, check=False)
                if refused.returncode != 1 or "409" not in refused.stderr:
                    raise StepFailed(f"advancing dormant {dormant} was not refused with 409: {refused.stderr}")
                note(f"advance of dormant {dormant}: {refused.stderr.strip()[:120]}")
            else:
                note("no dormant slot left to force (rejection panels rely on the policy's own)")
            import redis

            client = redis.Redis(host="127.0.0.1", port=self.ports["REDIS_PORT"])
            from esper.leyline import streams

            client.xadd(streams.TELEMETRY_TRAINING, {streams.ENVELOPE_FIELD: b"\x00 not msgpack"})
            client.close()
            note("one undecodable entry on the training stream")
        with self.t.step("run finished") as note:
            final = self.wait_for(
                "the run to finish", lambda: (s := self.status(run_id))["finished"] and s, timeout_s=300, every_s=2
            )
            note(f"{final['epoch']} epochs, val acc {final['val_accuracy']:.3f}, params {final['params_total']}")
        return final

    def status(self, run_id: str) -> dict[str, Any]:
        return json.loads(self.esper("--json", "show", run_id).stdout)

    def check_report(self, final: dict[str, Any]) -> None:
        with self.t.step("report copied out") as note:
            path = final["outcome"].get("report")
            if not path:
                raise StepFailed(f"run_finished carries no report path: {final['outcome']}")
            container = self.output(self.compose("ps", "-q", "tolaria")).strip()
            out = self.workdir / "report.json"
            self.output([self.docker, "cp", f"{container}:{path}", str(out)])
            report = json.loads(out.read_text())
            if report["epochs"] != EPOCHS:
                raise StepFailed(f"report has {report['epochs']} epochs, expected {EPOCHS}")
            note(
                f"{path}: final test accuracy {report['final_test_accuracy']:.3f}, "
                f"{len(report['seed_events'])} seed events, {report['params_final']} parameters"
            )

    def check_counts(self, run_id: str) -> None:
        with self.t.step("nissa counted the decisions") as note:

            def counts() -> tuple[float, float] | None:
                tamiyo = self.metric_sum(self.ports["TAMIYO_PORT"], "esper_tamiyo_decisions_total")
                nissa = self.metric_sum(self.ports["NISSA_PORT"], "esper_decisions_total", f'run_id="{run_id}"')
                return (tamiyo, nissa) if tamiyo > 0 and tamiyo == nissa else None

            tamiyo, nissa = self.wait_for("Nissa's decision count to equal Tamiyo's", counts, timeout_s=30)
            note(f"Tamiyo decided {tamiyo:.0f} times, Nissa counted {nissa:.0f}")

    def metric_sum(self, port: int, name: str, label: str = "") -> float:
        total = 0.0
        for line in self.get_text(f"http://127.0.0.1:{port}/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if label in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def prom_query(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        answer = self.get_json(url)
        if answer.get("status") != "success":
            raise StepFailed(f"Prometheus {path} {params}: {answer}")
        return answer["data"]

    def check_prometheus(self) -> None:
        with self.t.step("prometheus scraped every service") as note:

            def all_up() -> list[str] | None:
                up = {r["metric"]["job"]: r["value"][1] for r in self.prom_query("query", query="up")["result"]}
                return sorted(up) if all(up.get(s) == "1" for s in SERVICES) else None

            jobs = self.wait_for("up == 1 for every service", all_up, timeout_s=30)
            note(f"up == 1 for {', '.join(jobs)}")
        with self.t.step("every dashboard query returns data") as note:
            time.sleep(2 * SCRAPE_INTERVAL_S + 1)  # the final counters scraped at least twice
            queries = [q for f in dashboards.dashboard_files() for q in dashboards.queries(f)]
            empty = []
            for q in queries:
                data = self.prom_query(
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
        self.remove_wheel_links()
        end = time.monotonic() + 120
        if self.up:
            with self.t.step("compose down") as note:
                if failed:
                    subprocess.run(self.compose("ps"), cwd=ROOT, timeout=30, check=False)
                    subprocess.run(
                        self.compose("logs", "--no-color", "--tail", "60"), cwd=ROOT, timeout=60, check=False
                    )
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
        self.start_engine()
        self.base_images()
        self.build_images()
        self.image_checks()
        self.write_config()
        self.start_cluster()
        final = self.train()
        self.check_report(final)
        self.check_counts(final["run_id"])
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
        timeline.say(f"logs kept in {test.logs}")
    else:
        timeline.say(f"compose-test passed in {total:.1f}s")
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"passed": failed is None, "total_s": round(total, 1), "steps_s": timeline.steps}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
