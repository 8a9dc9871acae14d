"""What the deploy scripts share: timed steps, commands under one overall deadline, polling, HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


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
        """``with t.step("name") as note: ... note("detail")``: prints start, end, duration and the notes."""
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


class Shell:
    """Commands and waits bounded by one deadline; each command's output goes to ``logs/<name>.log``."""

    def __init__(self, logs: Path, deadline_s: float) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + deadline_s
        #: Commands started by :meth:`run` and not yet finished (threads may run several).
        self.running: set[subprocess.Popen[str]] = set()

    def stop_running(self) -> None:
        """Terminate every command :meth:`run` has going (on an interrupt or the deadline)."""
        for proc in list(self.running):
            proc.terminate()

    def remaining(self) -> float:
        """Seconds left; raises Deadline when none are."""
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
        """Run ``cmd`` logging to logs/<log_name>.log; StepFailed with the log's tail when it fails."""
        log = self.logs / f"{log_name}.log"
        timeout = min(timeout_s or 1e9, self.remaining())
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                text=True,
                env={**os.environ, **(env_extra or {})},
                cwd=ROOT,
            )
            self.running.add(proc)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                if time.monotonic() >= self.deadline:
                    raise Deadline() from None
                raise StepFailed(f"`{' '.join(cmd[:4])} ...` ran past {timeout:.0f} s; log {log}") from None
            finally:
                self.running.discard(proc)
        done = subprocess.CompletedProcess(cmd, proc.returncode)
        if check and done.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
            raise StepFailed(f"`{' '.join(cmd[:6])} ...` exited {done.returncode}; log {log}:\n{tail}")
        return done

    def output(self, cmd: list[str], timeout_s: float = 60.0, env: dict[str, str] | None = None) -> str:
        """``cmd``'s stdout; StepFailed with its stderr when it fails."""
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=min(timeout_s, self.remaining()),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if done.returncode != 0:
            raise StepFailed(f"`{' '.join(cmd[:6])}` exited {done.returncode}: {done.stderr.strip()[-1500:]}")
        return done.stdout

    def wait_for(self, what: str, probe: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
        """Call ``probe`` until it returns something truthy; StepFailed naming ``what`` and the last answer."""
        end = time.monotonic() + min(timeout_s, self.remaining())
        last: object = None
        while time.monotonic() < end:
            try:
                value = probe()
                if value:
                    return value
                last = value
            except (OSError, ValueError, KeyError) as exc:
                last = exc
            time.sleep(every_s)
        raise StepFailed(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def get_text(url: str, timeout_s: float = 10.0, token: str | None = None) -> str:
    """GET ``url`` (with a bearer token when given); HTTP errors raise (urllib's HTTPError is an OSError)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
        return str(response.read().decode())


def get_json(url: str, timeout_s: float = 10.0, token: str | None = None) -> Any:
    return json.loads(get_text(url, timeout_s, token))


def post_json(url: str, body: object, token: str, timeout_s: float = 10.0) -> Any:
    """POST ``body`` as JSON with a bearer token; the answer's JSON."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())
