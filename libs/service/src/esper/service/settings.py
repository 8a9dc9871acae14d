"""Service settings: command-line flags over environment variables over defaults.

Every Esper service reads the same core settings, so ``esper up``, docker
compose and Kubernetes configure them the same way:

========================  ==============================  =====================
variable                  meaning                         default
========================  ==============================  =====================
``ESPER_REDIS_URL``       the bus                         redis://127.0.0.1:6379/0
``ESPER_HOST``            address the HTTP server binds   127.0.0.1
``ESPER_<SERVICE>_PORT``  its port                        per service
``ESPER_CONSUMER``        consumer name in its groups     <service>-<hostname>
``ESPER_RUNS_DIR``        where runs, reports and         ./runs
                          archives are written
``ESPER_API_TOKEN``       bearer token for mutating       (none: mutations refused)
                          control-API routes (it reads
                          too)
``ESPER_API_READ_TOKEN``  a read-only bearer token        (none)
``ESPER_API_MAX_BODY_``   request bodies larger than      1048576
``BYTES``                 this are refused (413)
``ESPER_API_CORS_``       comma-separated origins that    (none: CORS off)
``ORIGINS``               browsers may call from
``ESPER_LOG_LEVEL``       logging level                   INFO
========================  ==============================  =====================

Tokens are never part of a settings object's ``repr`` (so logging one leaks
nothing). A service that has no use for the read token, the body limit or
CORS ignores those fields.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Default HTTP ports: the control API (Tamiyo), the trainer, the telemetry sink, the kernel store, the compiler.
DEFAULT_PORTS = {"tamiyo": 8700, "tolaria": 8701, "nissa": 8702, "urza": 8703, "tezzeret": 8704}
#: Request bodies above this many bytes are refused with 413 (a TrainingJob is well under 4 KiB).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    service: str
    redis_url: str
    host: str
    port: int
    consumer: str
    runs_dir: Path
    api_token: str | None = field(repr=False)
    log_level: str
    read_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()


def add_arguments(parser: argparse.ArgumentParser, service: str) -> None:
    """The flags every service takes; each defaults to its environment variable."""
    env = os.environ
    port_var = f"ESPER_{service.upper()}_PORT"
    parser.add_argument("--redis-url", default=env.get("ESPER_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--host", default=env.get("ESPER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get(port_var, DEFAULT_PORTS.get(service, 8000))))
    parser.add_argument("--consumer", default=env.get("ESPER_CONSUMER", f"{service}-{socket.gethostname()}"))
    parser.add_argument("--runs-dir", type=Path, default=Path(env.get("ESPER_RUNS_DIR", "runs")))
    parser.add_argument("--log-level", default=env.get("ESPER_LOG_LEVEL", "INFO"))


def settings_from(args: argparse.Namespace, service: str) -> ServiceSettings:
    """Settings from parsed flags; a bad value is an error naming the flag and the value."""
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"{service}: --port must be in 0..65535 (value {args.port!r})")
    level = str(args.log_level).upper()
    if level not in logging.getLevelNamesMapping():
        raise SystemExit(f"{service}: --log-level must be a logging level (value {args.log_level!r})")
    return ServiceSettings(
        service=service,
        redis_url=args.redis_url,
        host=args.host,
        port=args.port,
        consumer=args.consumer,
        runs_dir=args.runs_dir,
        api_token=os.environ.get("ESPER_API_TOKEN") or None,
        log_level=level,
        read_token=os.environ.get("ESPER_API_READ_TOKEN") or None,
        max_body_bytes=_max_body_bytes(service, os.environ.get("ESPER_API_MAX_BODY_BYTES")),
        cors_origins=tuple(o.strip() for o in os.environ.get("ESPER_API_CORS_ORIGINS", "").split(",") if o.strip()),
    )


def _max_body_bytes(service: str, raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_MAX_BODY_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SystemExit(f"{service}: ESPER_API_MAX_BODY_BYTES must be a whole number of bytes >= 1 (value {raw!r})")
    return value


def configure_logging(settings: ServiceSettings) -> None:
    """One line per record on stderr, prefixed with the service name."""
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s {settings.service} %(levelname)s %(name)s: %(message)s",
    )
