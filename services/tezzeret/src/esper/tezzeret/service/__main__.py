"""``python -m esper.tezzeret.service``: the compiler as a service.

Flags: the common service flags (``esper.service.add_arguments``; port
``ESPER_TEZZERET_PORT``, default 8704), plus ``--urza-url`` (``ESPER_URZA_URL``,
default http://127.0.0.1:8703), ``--repeats`` (timing repeats per kernel,
``ESPER_TEZZERET_REPEATS``, default 20) and ``--nice`` (``ESPER_TEZZERET_NICE``,
default 10: compiles yield the CPU to training). Uploads to Urza carry ``ESPER_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from esper.oona import RedisBus
from esper.service import add_arguments, configure_logging, serve, settings_from
from esper.tezzeret.service.app import TezzeretService
from esper.tezzeret.urza import UrzaClient

SERVICE = "tezzeret"
DEFAULT_URZA_URL = "http://127.0.0.1:8703"


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m esper.tezzeret.service", description="Esper Tezzeret: the compiler.")
    add_arguments(p, SERVICE)
    p.add_argument("--urza-url", default=env.get("ESPER_URZA_URL", DEFAULT_URZA_URL))
    p.add_argument("--repeats", type=int, default=int(env.get("ESPER_TEZZERET_REPEATS", 20)))
    p.add_argument(
        "--nice",
        type=int,
        default=int(env.get("ESPER_TEZZERET_NICE", 10)),
        help="CPU niceness increment: compiling ahead of need must not slow training on a shared machine",
    )
    return p


async def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args, SERVICE)
    if args.repeats < 1:
        raise SystemExit(f"{SERVICE}: --repeats must be >= 1 (value {args.repeats!r})")
    configure_logging(settings)
    if args.nice > 0:
        os.nice(args.nice)
    service = TezzeretService(
        RedisBus.from_url(settings.redis_url),
        UrzaClient(args.urza_url, settings.api_token),
        settings.consumer,
        repeats=args.repeats,
    )
    return await serve(
        service.app, host=settings.host, port=settings.port, loops=[service.run()], on_shutdown=service.stop
    )


if __name__ == "__main__":
    code = asyncio.run(main())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # An abandoned compile thread would hold the interpreter's exit until it finished;
    # its request is unacknowledged and comes back, so nothing is lost by not waiting.
    os._exit(code)
