"""``make compose-test``: start the compose cluster with a real Docker Engine, train a run through it, tear it down.

Steps (each printed with its duration): a Docker Engine (reused, or installed and started),
local stand-ins for the upstream base images no registry can give here, every service image
(no torch in Tamiyo and Nissa, non-root everywhere), ``deploy/docker-compose.yml`` plus the
host-network override on free ports, health of every container, a short job submitted with
``esper runs submit`` through Tamiyo's control API, an illegal adaptation forced (the safety
monitor's 409) and one undecodable message published (a dead letter) so the rejection and
dead-letter panels have something to show, the run's report copied out of the runs volume,
Nissa's decision count against Tamiyo's, the real Prometheus scraping every service, and every
dashboard query returning data. Then security in the running cluster: every container runs as
a non-root user with a read-only root filesystem (a write to ``/`` fails, ``/tmp`` works), and
the Redis ACLs hold: each service user is refused another's stream (Tolaria cannot XADD
Tamiyo's commands) and Redis' ``ACL LOG`` holds no refusal of any service after the whole run.
Teardown (``down -v``, and the engine if this run started it) happens on every exit.

Grafana's image is not in any registry this machine reaches, so it is not started here; its
dashboards are checked offline by ``tests/deploy`` and their queries run here against Prometheus.

``ESPER_SKIP_COMPOSE_TEST=1`` skips everything (and says so); nothing else skips silently.
``ESPER_COMPOSE_TEST_TIMEOUT_S`` (default 780) bounds the run; teardown has its own 120 s.
The last line is JSON with every step's seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboards
from cluster import SCRAPE_INTERVAL_S, STARTED, VENV_BIN, Cluster, main
from harness import StepFailed, Timeline, post_json
from images import SERVICES

EPOCHS = int(os.environ.get("ESPER_COMPOSE_TEST_EPOCHS", "8"))
#: Containers whose root filesystem must be read-only (all that compose-test starts).
READ_ONLY = STARTED
#: Each service user and a stream it must not publish on (it may only consume it, or not at all).
FORBIDDEN_XADD = {
    "tolaria": "esper.control.commands",
    "tamiyo": "esper.control.results",
    "nissa": "esper.telemetry.training",
    "tezzeret": "esper.compile.requests",
}


class ComposeTest(Cluster):
    def __init__(self, workdir: Path, timeline: Timeline, deadline_s: float) -> None:
        super().__init__(workdir, timeline, deadline_s)
        self.run_started = 0.0

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
            from esper.leyline import streams

            client = self.redis()  # the operator's admin user
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

    def check_security(self) -> None:
        with self.t.step("non-root, read-only containers") as note:
            states = self.states()
            for name in READ_ONLY:
                state = states[name]
                user = state["Config"]["User"] or "root"
                if user in ("root", "0", "0:0"):
                    raise StepFailed(f"container {name} runs as root")
                if not state["HostConfig"]["ReadonlyRootfs"]:
                    raise StepFailed(f"container {name} has a writable root filesystem")
                probe = "touch /esper-probe 2>/dev/null && echo writable; touch /tmp/esper-probe && echo tmp-ok"
                said = self.sh.output([self.docker, "exec", state["Id"], "sh", "-c", probe]).split()
                if said != ["tmp-ok"]:
                    raise StepFailed(f"container {name}: writing / and /tmp gave {said} (want only tmp-ok)")
            note(f"{len(READ_ONLY)} containers: non-root users, / read-only, /tmp writable")
        with self.t.step("redis ACLs") as note:
            import redis

            admin = self.redis()
            refusals = [e for e in admin.acl_log(count=1000) if e.get("username") in FORBIDDEN_XADD]
            if refusals:
                raise StepFailed(f"services were refused by their Redis ACLs during the run: {refusals[:5]}")
            for user, stream in FORBIDDEN_XADD.items():
                client = self.redis(user)
                try:
                    client.xadd(stream, {"m": b"acl probe"})
                    raise StepFailed(f"Redis let {user} XADD to {stream}")
                except redis.exceptions.NoPermissionError:
                    pass
                finally:
                    client.close()
            try:
                redis.Redis(host="127.0.0.1", port=self.ports["REDIS_PORT"], socket_timeout=5).ping()
                raise StepFailed("Redis answered the default user")
            except redis.exceptions.AuthenticationError:
                pass
            admin.close()
            note(
                f"no refusal of a service in ACL LOG during the run; {len(FORBIDDEN_XADD)} forbidden XADDs refused; "
                "default user off"
            )

    def main(self) -> dict[str, Any]:
        self.prepare()
        self.configure()
        self.start()
        final = self.train()
        self.check_run(final)
        self.check_prometheus()
        self.check_security()
        return {}


if __name__ == "__main__":
    sys.exit(main(ComposeTest, "compose-test", 780))
