"""The service stack as supervised subprocesses: start, wait until ready, restart the dead, stop cleanly.

Used by ``esper up`` and by the whole-stack tests. Each service runs as
``python -m <module>`` with the common service flags (``--redis-url``,
``--port``, ``--runs-dir``, ``--consumer``), its own session (so a Ctrl-C in
the terminal reaches only the supervisor, which then stops the services in
order) and SIGTERM on the supervisor's death. Output goes to
``<logs_dir>/<service>.log``.

A service that exits without being asked to is restarted after a backoff
(``RestartPolicy``); one that keeps dying is given up on and the stack reports
:attr:`Stack.failed`. :meth:`Stack.stop` sends SIGTERM to every service, waits
a grace period, then SIGKILLs what is left: no process survives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from esper.cli.processes import die_with_parent
from esper.service import DEFAULT_PORTS

#: The three services of ``esper up``: name -> module run with ``python -m``.
SERVICE_MODULES: dict[str, str] = {
    "tamiyo": "esper.tamiyo.service",
    "tolaria": "esper.tolaria.service",
    "nissa": "esper.nissa.service",
    "urza": "esper.urza.service",
    "tezzeret": "esper.tezzeret.service",
}
LOG_TAIL_CHARS = 3000


class StackError(RuntimeError):
    """The stack could not be brought up (a service never got ready, or kept dying)."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to run one service: ``python -m module --port port ... *args`` with ``env`` added."""

    name: str
    module: str
    port: int
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Restart a dead service after ``backoff_s * 2**n`` seconds (at most ``max_backoff_s``), ``max_restarts`` times."""

    max_restarts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delay(self, restarts_so_far: int) -> float:
        return float(min(self.backoff_s * 2**restarts_so_far, self.max_backoff_s))


def default_specs(
    ports: Mapping[str, int] | None = None, extra_args: Mapping[str, Iterable[str]] | None = None
) -> list[ServiceSpec]:
    """Specs for the services named in ``ports`` (default: all, on :data:`esper.service.DEFAULT_PORTS`)."""
    ports = ports or DEFAULT_PORTS
    extra_args = extra_args or {}
    return [
        ServiceSpec(name, module, ports[name], tuple(extra_args.get(name, ())))
        for name, module in SERVICE_MODULES.items()
        if name in ports
    ]


class ManagedService:
    """One service process and its log; restarted in place by the :class:`Stack`."""

    def __init__(self, spec: ServiceSpec, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.spec = spec
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.gave_up = False
        self.expected_exit = False
        self.restart_at: float | None = None
        self.pids: list[int] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.expected_exit = False
        self.restart_at = None
        with self.log_path.open("ab") as log:
            log.write(f"--- esper: starting {self.name}: {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.pids.append(self.process.pid)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the service (a fault test's SIGKILL; :meth:`Stack.stop` uses SIGTERM)."""
        if self.alive and self.process is not None:
            self.process.send_signal(sig)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - chars))
            return log.read().decode(errors="replace")

    def readiness(self, timeout_s: float = 1.0) -> str | None:
        """``None`` when ``/readyz`` answers 200, else why not."""
        if not self.alive:
            code = self.process.returncode if self.process is not None else None
            return f"not running (exit code {code})"
        try:
            response = httpx.get(f"{self.url}/readyz", timeout=timeout_s)
        except httpx.HTTPError as exc:
            return f"no answer on {self.url}/readyz ({type(exc).__name__})"
        if response.status_code == 200:
            return None
        return f"/readyz answered {response.status_code}: {response.text[:200]}"


class Stack:
    """Tamiyo, Tolaria and Nissa (or any :class:`ServiceSpec` list) as supervised subprocesses."""

    def __init__(
        self,
        specs: Iterable[ServiceSpec],
        *,
        redis_url: str,
        runs_dir: Path,
        logs_dir: Path,
        api_token: str | None = None,
        env: Mapping[str, str] | None = None,
        restart: RestartPolicy | None = None,
        python: str = sys.executable,
    ) -> None:
        self.redis_url = redis_url
        self.runs_dir = Path(runs_dir)
        self.logs_dir = Path(logs_dir)
        self.api_token = api_token
        self.restart_policy = restart or RestartPolicy()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        base_env = dict(os.environ if env is None else env)
        base_env["ESPER_REDIS_URL"] = redis_url
        base_env["ESPER_RUNS_DIR"] = str(self.runs_dir)
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        if api_token is not None:
            base_env["ESPER_API_TOKEN"] = api_token
        self.services: dict[str, ManagedService] = {}
        for spec in specs:
            command = [
                python,
                "-m",
                spec.module,
                "--redis-url",
                redis_url,
                "--port",
                str(spec.port),
                "--runs-dir",
                str(self.runs_dir),
                # A fixed consumer name per service: a restarted service takes back its own pending entries.
                "--consumer",
                f"{spec.name}-{spec.port}",
                *spec.args,
            ]
            service_env = {**base_env, **spec.env}
            self.services[spec.name] = ManagedService(spec, command, service_env, self.logs_dir / f"{spec.name}.log")
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def __getitem__(self, name: str) -> ManagedService:
        return self.services[name]

    @property
    def failed(self) -> list[str]:
        """Services given up on (they died more than the restart policy allows)."""
        return [s.name for s in self.services.values() if s.gave_up]

    def start(self, supervise: bool = True) -> Stack:
        """Start every service; with ``supervise``, a background thread restarts the ones that die."""
        with self._lock:
            for service in self.services.values():
                service.start()
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="esper-stack-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        """Return when every ``/readyz`` is 200; :class:`StackError` with the failing service's log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        pending = dict.fromkeys(self.services, "not checked yet")
        while True:
            for name in list(pending):
                service = self.services[name]
                if service.gave_up:
                    raise StackError(self._explain(service, f"{name} kept dying ({service.restarts} restarts)"))
                reason = service.readiness()
                if reason is None:
                    del pending[name]
                else:
                    pending[name] = reason
            if not pending:
                return
            if time.monotonic() > deadline:
                name, reason = next(iter(pending.items()))
                raise StackError(
                    self._explain(self.services[name], f"{name} not ready after {timeout_s:.0f}s: {reason}")
                )
            time.sleep(poll_s)

    def restart(self, name: str) -> None:
        """Stop ``name`` if it runs (SIGTERM, then SIGKILL) and start it again now."""
        service = self.services[name]
        with self._lock:
            self._terminate([service], grace_s=10.0)
            service.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service, SIGKILL those still running after ``grace_s``; wait for all of them."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        with self._lock:
            self._terminate(list(self.services.values()), grace_s)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _terminate(self, services: list[ManagedService], grace_s: float) -> None:
        for service in services:
            service.expected_exit = True
            service.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in services:
            if service.process is None:
                continue
            try:
                service.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with service.log_path.open("ab") as log:
                    log.write(f"--- esper: {service.name} ignored SIGTERM for {grace_s:.0f}s; SIGKILL\n".encode())
                service.process.kill()
                service.process.wait()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for service in self.services.values():
                    self._check(service)

    def _check(self, service: ManagedService) -> None:
        if service.gave_up or service.alive or service.process is None or service.expected_exit:
            return
        now = time.monotonic()
        if service.restart_at is None:
            code = service.process.returncode
            if service.restarts >= self.restart_policy.max_restarts:
                service.gave_up = True
                self._note(service, f"exited with code {code}; gave up after {service.restarts} restarts")
                return
            delay = self.restart_policy.delay(service.restarts)
            service.restart_at = now + delay
            self._note(service, f"exited with code {code}; restarting in {delay:.1f}s")
        elif now >= service.restart_at:
            service.restarts += 1
            service.start()

    def _note(self, service: ManagedService, text: str) -> None:
        with service.log_path.open("ab") as log:
            log.write(f"--- esper: {service.name} {text}\n".encode())

    def _explain(self, service: ManagedService, headline: str) -> str:
        return f"{headline}\n--- last lines of {service.log_path} ---\n{service.log_tail()}"
