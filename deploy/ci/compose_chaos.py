"""``make compose-chaos``: the chaos faults against the compose cluster, then the chaos suite's checks.

The cluster is the one ``make compose-test`` starts (:class:`cluster.Cluster`: real images,
Redis with AOF ``appendfsync always`` and the per-service ACL users, read-only containers).
Runs train through it (submitted to Tamiyo's control API) while, in an order and at moments
drawn from ``--seed``, the Docker Engine (through the ``docker`` Python SDK):

* ``kill <service>``: SIGKILLs the Tamiyo, Tolaria and Nissa containers in turn, each started
  again (``docker kill`` + ``docker start``);
* ``redis kill``: SIGKILLs the Redis container and starts it again after a short outage, during
  which a run is submitted (the API must answer 503 or enqueue it) ;
* ``redis restart``: ``docker restart`` of Redis (a clean shutdown);
* ``poison``: undecodable bytes on the training stream (written as the admin ACL user).

Afterwards the checks of ``tests/chaos/checks.py``, read from Redis, Nissa's archive (the runs
volume) and the control API: every accepted run finished with all its epochs, no command
applied twice, every archived telemetry message in Nissa's archive exactly once, every poison
entry dead-lettered, no phantom run, and no container that exited on its own. The table
(fault, injected, runs affected, what was lost) is printed, then JSON as the last line.

    python deploy/ci/compose_chaos.py [--seed 14] [--runs 4] [--epochs 10]

``ESPER_SKIP_COMPOSE_CHAOS=1`` skips it (and says so); ``ESPER_COMPOSE_CHAOS_TIMEOUT_S``
(default 1500) bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import VENV_BIN, Cluster, main
from harness import ROOT, StepFailed, Timeline

sys.path.insert(0, str(ROOT / "tests"))  # the chaos suite's checks and table, and redis_server

SERVICES_KILLED = ("tamiyo", "tolaria", "nissa")


def docker_sdk() -> Any:
    """The ``docker`` SDK (pinned in constraints.txt), installed into the venv when missing."""
    try:
        import docker
    except ImportError:
        import subprocess

        pip = [str(VENV_BIN / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "docker"], check=True, timeout=300)
        import docker
    return docker.from_env(timeout=120)


class ComposeChaos(Cluster):
    def __init__(self, workdir: Path, timeline: Timeline, deadline_s: float, args: argparse.Namespace) -> None:
        super().__init__(workdir, timeline, deadline_s, name="esperchaos")
        from chaos.campaign import Campaign, CampaignConfig

        self.config = CampaignConfig(seed=args.seed, runs=args.runs, epochs=args.epochs)
        self.campaign = Campaign(self.config)
        self.rng = random.Random(args.seed)
        self.sdk: Any = None
        self.began = 0.0
        self.finished: set[str] = set()
        self.restarts: dict[str, int] = {}

    # -- the cluster through the SDK -------------------------------------------------------------
    def box(self, service: str) -> Any:
        found = self.sdk.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
        )
        if len(found) != 1:
            raise StepFailed(f"expected one {service} container, found {len(found)}")
        return found[0]

    def wait_healthy_box(self, service: str, timeout_s: float = 180) -> None:
        def healthy() -> bool:
            box = self.box(service)
            box.reload()
            state = box.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                box.start()  # docker's restart policy did not bring it back (a `docker kill` is a stop to it)
                return False
            return bool(state.get("Health", {}).get("Status") == "healthy")

        self.sh.wait_for(f"{service} healthy", healthy, timeout_s=timeout_s, every_s=0.5)
        self.restarts[service] = self.box(service).attrs["RestartCount"]

    def ensure_started(self, box: Any) -> None:
        """``docker start`` unless the restart policy already brought it back."""
        import docker

        box.reload()
        if box.status not in ("running", "restarting"):
            try:
                box.start()
            except docker.errors.APIError as exc:  # started meanwhile
                self.t.say(f"docker start {box.name}: {exc}")

    def submit(self, label: str) -> int:
        run_id = f"cc-{label}-{uuid.uuid4().hex[:6]}"
        body = {**self.config.job(), "run_id": run_id}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['TAMIYO_PORT']}/runs",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        key = f"submit {status}"
        self.campaign.answers[key] = self.campaign.answers.get(key, 0) + 1
        if status == 202:
            self.campaign.accepted[run_id] = self.config.epochs
        elif status in (0, 503):
            self.campaign.refused.append(run_id)
        else:
            raise StepFailed(f"POST /runs answered {status} (want 202, or 503 during an outage)")
        return status

    def active(self) -> list[str]:
        for run_id in self.campaign.accepted:
            if run_id not in self.finished:
                try:
                    if self.api(f"/runs/{run_id}").get("finished"):
                        self.finished.add(run_id)
                except OSError:
                    pass
        return sorted(set(self.campaign.accepted) - self.finished)

    # -- faults ------------------------------------------------------------------------------------
    def schedule(self) -> list[str]:
        others = ["redis kill", "redis restart", "poison", "poison"]
        self.rng.shuffle(others)
        for offset, slot in enumerate(sorted(self.rng.randrange(len(others) + 1) for _ in SERVICES_KILLED)):
            others.insert(slot + offset, f"kill {SERVICES_KILLED[offset]}")
        return others

    def inject(self, kind: str) -> None:
        from chaos.campaign import Fault

        fault = Fault(kind, time.monotonic() - self.began, self.active())
        if kind.startswith("kill "):
            service = kind.split()[1]
            box = self.box(service)
            box.kill()
            box.wait(timeout=60)
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.ensure_started(box)
            self.wait_healthy_box(service)
            fault.detail = f"{service} killed and started"
        elif kind == "redis kill":
            box = self.box("redis")
            box.kill()
            box.wait(timeout=60)
            answer = self.submit("outage")
            time.sleep(self.rng.uniform(1.0, 3.0))
            self.ensure_started(box)
            self.wait_healthy_box("redis")
            fault.detail = f"submit during the outage answered {answer}"
        elif kind == "redis restart":
            self.box("redis").restart(timeout=10)
            self.wait_healthy_box("redis")
            fault.detail = "docker restart"
        elif kind == "poison":
            from esper.leyline import streams as ls

            client = self.redis()
            entry = client.xadd(ls.TELEMETRY_TRAINING, {ls.ENVELOPE_FIELD: os.urandom(40)}).decode()
            client.close()
            self.campaign.poison_entries.append(entry)
            fault.detail = f"entry {entry}"
        self.campaign.faults.append(fault)
        self.t.say(f"fault {kind}: {fault.detail}; runs active {len(fault.runs_affected)}")

    # -- the campaign ------------------------------------------------------------------------------
    def main(self) -> dict[str, Any]:
        self.prepare()
        self.configure()
        self.start()
        self.sdk = docker_sdk()
        for service in ("redis", *SERVICES_KILLED):
            self.restarts[service] = self.box(service).attrs["RestartCount"]
        with self.t.step("runs submitted") as note:
            self.began = time.monotonic()
            for i in range(self.config.runs):
                if self.submit(f"run{i}") != 202:
                    raise StepFailed("a run was refused with Redis up")
            self.sh.wait_for(
                "the first epoch", lambda: any(self.api(f"/runs/{r}")["epoch"] for r in self.campaign.accepted), 300
            )
            note(f"{self.config.runs} runs of {self.config.epochs} epochs")
        with self.t.step("faults") as note:
            for kind in self.schedule():
                time.sleep(self.rng.uniform(*self.config.gap_s))
                self.inject(kind)
            note(", ".join(f.kind for f in self.campaign.faults))
        with self.t.step("runs finished") as note:
            self.sh.wait_for("every accepted run to finish", lambda: not self.active(), timeout_s=900, every_s=2)
            note(f"{len(self.finished)} of {len(self.campaign.accepted)}")
        return self.verify()

    def verify(self) -> dict[str, Any]:
        from chaos.checks import verify
        from chaos.report import rows, table

        with self.t.step("checks") as note:
            time.sleep(5)  # Nissa's last batch archived
            runs_dir = Path(self.sdk.volumes.get(f"{self.project}_runs").attrs["Mountpoint"])
            client = self.redis()
            listed = self.api("/runs")
            accepted, refused, poison = self.campaign.accepted, self.campaign.refused, self.campaign.poison_entries
            verdict = verify(client, runs_dir, accepted, refused, listed, poison)
            client.close()
            crashes = {s: self.box(s).attrs["RestartCount"] - n for s, n in self.restarts.items()}
            self.campaign.crashes = crashes
            verdict.summary["service_crashes"] = sum(crashes.values())
            self.campaign.verdict = verdict
            self.campaign.wall_s = time.monotonic() - self.began
            s = verdict.summary
            ok = (
                s["runs_finished"] == s["runs_accepted"]
                and s["commands_applied_twice"] == 0
                and s["telemetry_missing"] == 0
                and s["telemetry_duplicated"] == 0
                and s["phantom_runs"] == 0
                and s["refused_but_enqueued"] == 0
                and s["poison_dead_lettered"] == s["poison_injected"]
                and s["service_crashes"] == 0
            )
            print(table(self.campaign), flush=True)
            note("every check passed" if ok else "CHECKS FAILED")
        if not ok:
            raise StepFailed(f"compose-chaos checks failed: {s}")
        return {
            "seed": self.config.seed,
            "wall_s": round(self.campaign.wall_s, 1),
            **s,
            "faults": rows(self.campaign),
            "api_answers": self.campaign.answers,
        }


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=14, help="seed of fault order and moments (default 14)")
    parser.add_argument("--runs", type=int, default=4, help="runs submitted before the faults (default 4)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    args = parser.parse_args()
    return main(lambda w, t, d: ComposeChaos(w, t, d, args), "compose-chaos", 1500)


if __name__ == "__main__":
    sys.exit(cli())
