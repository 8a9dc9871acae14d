"""``esper up``: the whole stack on this machine, until Ctrl-C or SIGTERM (or, with ``--demo``, one run).

Redis is the one at ``ESPER_REDIS_URL`` when it answers PING, else a private
``redis-server`` on a free port that ``esper up`` starts and stops. Tamiyo,
Tolaria and Nissa run as supervised subprocesses (:mod:`esper.cli.stack`),
logging to ``<logs-dir>/<service>.log``. Stopping sends SIGTERM to every
service, SIGKILL after a grace period, then stops the private Redis: nothing
is left running.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from esper.cli.demo import run_demo
from esper.cli.redis_local import PrivateRedis, RedisUnavailableError, resolve_redis
from esper.cli.stack import SERVICE_MODULES, RestartPolicy, ServiceSpec, Stack
from esper.leyline import TrainingJob, validate
from esper.service import DEFAULT_PORTS
from esper.service.settings import DEFAULT_REDIS_URL


class Terminated(Exception):
    """SIGTERM or SIGINT arrived: stop the stack."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (value {value!r})")
    return number


def _services(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in SERVICE_MODULES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"services are {', '.join(SERVICE_MODULES)} (value {value!r})")
    return names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``esper up`` and its flags."""
    env = os.environ
    up = sub.add_parser("up", help="start Redis (if needed) and the Tamiyo, Tolaria, Nissa, Urza and Tezzeret services")
    up.add_argument("--redis-url", default=env.get("ESPER_REDIS_URL", DEFAULT_REDIS_URL))
    up.add_argument("--runs-dir", type=Path, default=Path(env.get("ESPER_RUNS_DIR", "runs")))
    up.add_argument("--logs-dir", type=Path, default=None, help="service logs (default RUNS_DIR/logs)")
    for name in SERVICE_MODULES:
        default = int(env.get(f"ESPER_{name.upper()}_PORT", DEFAULT_PORTS[name]))
        up.add_argument(f"--{name}-port", type=int, default=default, help=f"{name}'s HTTP port (default {default})")
    up.add_argument("--only", type=_services, default=tuple(SERVICE_MODULES), help="comma-separated services to run")
    up.add_argument("--profile", default=None, help="Nissa's diagnostic profile (minimal|standard|research)")
    up.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for every /readyz")
    up.add_argument("--max-restarts", type=int, default=5, help="restarts of a dying service before giving up")
    demo = up.add_argument_group("demo (--demo: submit the default job, wait for its report, stop)")
    demo.add_argument("--demo", action="store_true", help="run the default MNIST-1D job with the heuristic Tamiyo")
    demo.add_argument("--epochs", type=_positive, default=None, help="planned epochs (default: the job's default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--max-train-samples", type=_positive, default=None, help="train on the first N rows only")
    demo.add_argument(
        "--async",
        dest="lockstep",
        action="store_false",
        help="Tolaria never waits for Tamiyo (default: lockstep, the decisions of `esper train`)",
    )
    demo.add_argument("--demo-timeout", type=float, default=3600.0, help="seconds the run may take")


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Terminated` in the main thread, once: cleanup is not interrupted."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _restore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def up(args: argparse.Namespace) -> int:
    """Run ``esper up``; returns the exit code (0 after a clean stop or a finished demo)."""
    ports = {name: getattr(args, f"{name}_port") for name in SERVICE_MODULES}
    if args.demo and set(args.only) != set(SERVICE_MODULES):
        raise ValueError(f"field 'only': --demo needs every service (value {','.join(args.only)!r})")
    for name in args.only:
        if _port_taken(ports[name]):
            raise ValueError(f"field '{name}_port': port {ports[name]} is in use (value {ports[name]}); pick another")
    logs_dir = args.logs_dir or args.runs_dir / "logs"
    token = os.environ.get("ESPER_API_TOKEN") or None
    generated = token is None
    if generated:
        token = secrets.token_urlsafe(24)
    extra = {"nissa": ("--profile", args.profile)} if args.profile else {}
    # Tezzeret uploads to this Urza; Tamiyo asks it for kernels ahead of need.
    urza = {"ESPER_URZA_URL": f"http://127.0.0.1:{ports['urza']}"} if "urza" in args.only else {}
    specs = [ServiceSpec(n, SERVICE_MODULES[n], ports[n], tuple(extra.get(n, ())), urza) for n in args.only]

    private: PrivateRedis | None = None
    stack: Stack | None = None
    code = 0
    _install_signal_handlers()
    try:
        try:
            redis_url, private = resolve_redis(args.redis_url)
        except RedisUnavailableError as exc:
            print(f"esper up: error: {exc}", file=sys.stderr, flush=True)
            return 2
        where = f"private redis-server (pid {private.pid}), stopped on exit" if private else "reachable"
        print(f"esper up: redis {redis_url} ({where})", flush=True)
        stack = Stack(
            specs,
            redis_url=redis_url,
            runs_dir=args.runs_dir,
            logs_dir=logs_dir,
            api_token=token,
            restart=RestartPolicy(max_restarts=args.max_restarts),
        )
        stack.start()
        started = ", ".join(f"{s.name} (pid {s.pid})" for s in stack.services.values())
        print(f"esper up: started {started}; waiting until ready", flush=True)
        stack.wait_ready(timeout_s=args.ready_timeout)
        _print_ready(stack, token if generated else None, private is not None)
        if args.demo:
            defaults = TrainingJob()
            job = validate(
                TrainingJob(
                    epochs=args.epochs or defaults.epochs,
                    seed=args.seed,
                    max_train_samples=args.max_train_samples,
                    lockstep=args.lockstep,
                )
            )
            run_demo(stack, job, token=token or "", timeout_s=args.demo_timeout)
        else:
            code = _wait_forever(stack)
    except Terminated as exc:
        print(f"esper up: {exc} received; stopping the stack", flush=True)
        # Stopping is how plain `esper up` ends; an interrupted demo did not do its job.
        code = 128 + exc.signum if args.demo else 0
    except (RuntimeError, OSError, httpx.HTTPError) as exc:  # StackError is a RuntimeError
        print(f"esper up: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if private is not None:
            private.stop()
        _restore_signals()
        if stack is not None:
            print("esper up: stopped", flush=True)
    return code


def _wait_forever(stack: Stack) -> int:
    while True:
        time.sleep(0.5)
        if stack.failed:
            names = ", ".join(stack.failed)
            service = stack[stack.failed[0]]
            print(f"esper up: error: {names} kept dying; see {service.log_path}\n{service.log_tail()}", flush=True)
            return 1


def _print_ready(stack: Stack, new_token: str | None, private_redis: bool) -> None:
    lines = ["esper up: stack ready"]
    if "tamiyo" in stack.services:
        lines.append(f"  control API  {stack['tamiyo'].url}/docs   (CLI: esper runs ...)")
    if new_token is not None:
        lines.append(f"  API token    {new_token}   (generated; set ESPER_API_TOKEN to choose one)")
    lines.append("  metrics      " + "  ".join(f"{s.url}/metrics" for s in stack.services.values()))
    lines.append("  logs         " + "  ".join(str(s.log_path) for s in stack.services.values()))
    lines.append(f"  runs         {stack.runs_dir}/<run id>/  (Nissa: {stack.runs_dir}/nissa/<run id>/)")
    lines.append("  Ctrl-C stops everything" + (" (the private Redis too)" if private_redis else ""))
    print("\n".join(lines), flush=True)
