"""A Docker Engine for ``make compose-test``: reuse a running one, else install and start one, and
stop only the one this process started.

The CI machines are Debian bookworm, root, with no container registry and no bridge networking
(traffic may only go to loopback), so an engine started here runs without a bridge or iptables
rules and every container uses the host's network. Those settings go in a config file of its
own, written to the run's work dir on top of the machine's ``/etc/docker/daemon.json`` (which is
never written): dockerd refuses to start when a setting is both a flag and in its config file,
and a machine set up by hand often has these very settings there. Debian's client (``/usr/bin/docker``) is preferred: it has BuildKit
built in, which this builder needs for ``docker build --network host`` from local images.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Debian packages that provide the engine, compose v1 and the base-image tool.
ENGINE_PACKAGES = ("docker.io", "docker-compose", "debootstrap")
#: The machine's own dockerd settings, read (never written) by an engine started here.
SYSTEM_CONFIG = Path("/etc/docker/daemon.json")
#: No bridge, no iptables rules: the CI machines allow loopback traffic only.
NETWORK_SETTINGS: dict[str, Any] = {"bridge": "none", "iptables": False, "ip-masq": False}


class EngineError(RuntimeError):
    """No engine can be used here; the message says why."""


def docker_client() -> str:
    """Debian's docker client when installed (BuildKit built in), else whatever ``docker`` is on PATH."""
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise EngineError("no docker client installed")
    return found


def engine_answers(timeout_s: float = 10.0) -> bool:
    """True when a client is installed and ``docker info`` answers."""
    try:
        client = docker_client()
    except EngineError:
        return False
    try:
        done = subprocess.run([client, "info"], capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def apt_install(packages: list[str], log: Path) -> None:
    """``apt-get install`` as root; EngineError naming the packages and the log when it fails."""
    if os.geteuid() != 0:
        raise EngineError(f"{' '.join(packages)} missing and not root, so they cannot be installed")
    if shutil.which("apt-get") is None:
        raise EngineError(f"{' '.join(packages)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        ):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode != 0:
                raise EngineError(f"`{' '.join(cmd)}` failed; see {log}")


def placement() -> dict[str, Any]:
    """Where a started dockerd listens and keeps its state, as config-file settings.

    ``DOCKER_HOST`` (a unix socket; the clients read it too) and ``ESPER_DOCKERD_DATA_ROOT``
    let a second, separate engine run beside the usual one, e.g. to build from an empty
    image store; by default the standard socket and /var/lib/docker, so images stay cached.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise EngineError(f"DOCKER_HOST={host!r}: only a unix socket can be started here")
    settings: dict[str, Any] = {"hosts": [host]}
    root = os.environ.get("ESPER_DOCKERD_DATA_ROOT")
    if root:
        name = Path(root).name
        settings |= {"data-root": root, "exec-root": f"/run/{name}", "pidfile": f"/run/{name}.pid"}
    return settings


def daemon_config(system: Path = SYSTEM_CONFIG) -> dict[str, Any]:
    """The started engine's settings: the machine's (``system``, when it exists), then this run's
    network and placement over them."""
    settings: dict[str, Any] = {}
    if system.exists():
        try:
            loaded = json.loads(system.read_text())
        except json.JSONDecodeError as error:
            raise EngineError(f"{system}: not valid JSON ({error}), so dockerd could not start with it") from None
        if not isinstance(loaded, dict):
            raise EngineError(f"{system}: expected a JSON object of settings, got {type(loaded).__name__}")
        settings |= loaded
    return settings | NETWORK_SETTINGS | placement()


@dataclass
class Engine:
    """The engine a run uses; ``started`` is the dockerd this process launched (None when reused)."""

    workdir: Path
    started: subprocess.Popen[bytes] | None = None
    installed: list[str] = field(default_factory=list)

    def ensure(self, timeout_s: float = 90.0) -> str:
        """Make an engine answer; returns a one-line description of what was done."""
        missing = [
            p
            for p, tool in zip(ENGINE_PACKAGES, ("dockerd", "docker-compose", "debootstrap"), strict=True)
            if shutil.which(tool) is None
        ]
        if missing:
            apt_install(missing, self.workdir / "apt.log")
            self.installed = missing
        if engine_answers():
            return "reused the running engine" + (f" (installed {' '.join(missing)})" if missing else "")
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineError("dockerd is not installed (Debian package docker.io)")
        config = self.workdir / "daemon.json"
        config.write_text(json.dumps(daemon_config(), indent=2) + "\n")
        log = (self.workdir / "dockerd.log").open("ab")
        self.started = subprocess.Popen(
            [dockerd, f"--config-file={config}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.started.poll() is not None:
                tail = (self.workdir / "dockerd.log").read_text(errors="replace")[-2000:]
                self.started = None
                raise EngineError(f"dockerd exited at start:\n{tail}")
            if engine_answers(timeout_s=5.0):
                return f"started dockerd (pid {self.started.pid})" + (
                    f", installed {' '.join(missing)}" if missing else ""
                )
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"dockerd did not answer within {timeout_s:.0f} s; see {self.workdir / 'dockerd.log'}")

    def stop(self, timeout_s: float = 30.0) -> str:
        """Stop the dockerd this process started (and only that one)."""
        proc, self.started = self.started, None
        if proc is None:
            return "left the engine running (not started here)"
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return f"killed dockerd (pid {proc.pid}) after {timeout_s:.0f} s"
        return f"stopped dockerd (pid {proc.pid})"
