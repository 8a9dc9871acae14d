"""``python -m esper.nissa.service``: the telemetry sink as a service.

Flags: the common service flags (``esper.service.add_arguments``), plus
``--profile minimal|standard|research`` (``ESPER_NISSA_PROFILE``, default
standard) and ``--archive-dir`` (``ESPER_NISSA_ARCHIVE_DIR``, default
``<runs-dir>/nissa``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.nissa.profiles import PROFILES, get_profile
from esper.nissa.service.recorder import NissaService, default_archive_dir
from esper.oona import RedisBus
from esper.service import add_arguments, configure_logging, serve, settings_from

SERVICE = "nissa"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m esper.nissa.service", description="Esper Nissa: the telemetry sink.")
    add_arguments(p, SERVICE)
    p.add_argument(
        "--profile",
        default=os.environ.get("ESPER_NISSA_PROFILE", "standard"),
        help=f"diagnostic profile: {' | '.join(PROFILES)} (env ESPER_NISSA_PROFILE)",
    )
    env_dir = os.environ.get("ESPER_NISSA_ARCHIVE_DIR")
    p.add_argument(
        "--archive-dir",
        type=Path,
        default=Path(env_dir) if env_dir else None,
        help="per-run archives and narratives (default RUNS_DIR/nissa; env ESPER_NISSA_ARCHIVE_DIR)",
    )
    return p


async def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args, SERVICE)
    try:
        profile = get_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(f"{SERVICE}: --profile: {exc}") from None
    configure_logging(settings)
    archive_dir = args.archive_dir or default_archive_dir(settings.runs_dir)
    service = NissaService(RedisBus.from_url(settings.redis_url), archive_dir, profile, settings.consumer)
    return await serve(
        service.app,
        host=settings.host,
        port=settings.port,
        loops=[service.run()],
        on_shutdown=service.stop,
        log_level="warning",
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
