"""``python -m esper.tolaria.service``: the trainer as a service.

Flags: the common service flags (``esper.service.add_arguments``: ``--redis-url``,
``--host``, ``--port`` (default 8701), ``--consumer``, ``--runs-dir``,
``--log-level`` and their ``ESPER_*`` variables), plus ``--torch-threads``
(``ESPER_TOLARIA_TORCH_THREADS``; default: torch's own choice), ``--max-runs``
(``ESPER_TOLARIA_MAX_RUNS``: runs trained at once, default 1) and ``--lease-ms``
(``ESPER_LEASE_MS``: how long a run's lease outlives its last renewal; a dead
replica's runs move to another after about three times this).

Runs train on ``ESPER_DEVICE`` (``esper.tolaria.device``: ``auto``, the default,
is the GPU when torch has one, else the CPU). The setting is checked at start:
a replica told ``cuda`` that cannot use a GPU stops, naming the device, instead
of refusing every job or training on the CPU.

With ``ESPER_URZA_URL`` set, germinated seeds come from compiled kernels
through one loader per process (:func:`esper.kasmina.kernels.process_loader`;
cache ``ESPER_KERNEL_CACHE``), built eagerly with a ``kernel_fallback`` event
where a kernel is not ready or does not load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from esper.kasmina.kernels import process_loader
from esper.oona import RedisBus
from esper.service import add_arguments, configure_logging, serve, settings_from
from esper.tolaria.device import DEVICE_ENV, configured_device, resolve_device
from esper.tolaria.service.app import DEFAULT_LEASE_MS, TolariaService

SERVICE = "tolaria"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m esper.tolaria.service", description="Esper Tolaria: the trainer.")
    add_arguments(p, SERVICE)
    threads = os.environ.get("ESPER_TOLARIA_TORCH_THREADS")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=int(threads) if threads else None,
        help="CPU threads torch may use for training (env ESPER_TOLARIA_TORCH_THREADS)",
    )
    p.add_argument(
        "--max-runs",
        type=int,
        default=int(os.environ.get("ESPER_TOLARIA_MAX_RUNS") or 1),
        help="runs this replica trains at once (env ESPER_TOLARIA_MAX_RUNS; default 1)",
    )
    p.add_argument(
        "--lease-ms",
        type=int,
        default=int(os.environ.get("ESPER_LEASE_MS") or DEFAULT_LEASE_MS),
        help=f"run lease in ms; a dead replica's jobs are claimed after 3x this (env ESPER_LEASE_MS; "
        f"default {DEFAULT_LEASE_MS})",
    )
    return p


async def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args, SERVICE)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise SystemExit(f"{SERVICE}: --torch-threads must be >= 1 (value {args.torch_threads!r})")
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.max_runs < 1:
        raise SystemExit(f"{SERVICE}: --max-runs must be >= 1 (value {args.max_runs!r})")
    if args.lease_ms < 100:
        raise SystemExit(f"{SERVICE}: --lease-ms must be >= 100 (value {args.lease_ms!r})")
    configure_logging(settings)
    try:
        device = resolve_device(configured_device(), DEVICE_ENV)
    except ValueError as exc:
        raise SystemExit(f"{SERVICE}: {exc}") from None
    logging.getLogger(__name__).info("runs train on %s", device)
    try:
        kernels = process_loader()  # checked now, so a bad setting stops the service instead of every job
    except ValueError as exc:
        raise SystemExit(f"{SERVICE}: {exc}") from None
    if kernels is not None:
        url = os.environ["ESPER_URZA_URL"]
        logging.getLogger(__name__).info("seeds from kernels in Urza at %s, cached in %s", url, kernels.cache.root)
    service = TolariaService(
        RedisBus.from_url(settings.redis_url),
        settings.runs_dir,
        settings.consumer,
        max_runs=args.max_runs,
        lease_ms=args.lease_ms,
    )
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
