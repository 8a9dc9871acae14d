"""``python -m esper.tamiyo.service``: read config, build the objects, run the consumer and the API.

Learned policies are registered by name from ``--policy-dir`` (``ESPER_POLICY_DIR``,
:mod:`esper.tamiyo.service.registry`; every replica needs the same directory).
Replicas share runs (:class:`esper.tamiyo.service.loop.RunShards`); ``--lease-ms``
(``ESPER_LEASE_MS``) is how long a dead replica keeps its runs before the others
adopt them. Each replica needs its own ``--consumer`` name.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from esper.oona import RedisBus
from esper.service import BusReadiness, ServiceSettings, add_arguments, configure_logging, serve, settings_from
from esper.tamiyo.api import create_app
from esper.tamiyo.collector import HealthCollector, RunStore
from esper.tamiyo.policies import DEFAULT_SAFETY
from esper.tamiyo.safety import SafetyConfig, SafetyMonitor
from esper.tamiyo.service.control import RunControl
from esper.tamiyo.service.kernels import KernelPrefetch, UrzaKernelStatus
from esper.tamiyo.service.loop import DEFAULT_LEASE_MS, DecisionLoop, RunShards
from esper.tamiyo.service.metrics import TamiyoMetrics
from esper.tamiyo.service.registry import POLICY_DIR_ENV, PolicyRegistry

log = logging.getLogger("esper.tamiyo.service")
SERVICE = "tamiyo"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m esper.tamiyo.service", description="Tamiyo: decisions and control API")
    add_arguments(p, SERVICE)
    defaults = DEFAULT_SAFETY
    p.add_argument("--max-active-seeds", type=int, default=defaults.max_active_seeds, help="live seeds per run")
    p.add_argument(
        "--max-telemetry-age-s", type=float, default=defaults.max_telemetry_age_s, help="older telemetry is stale"
    )
    p.add_argument("--min-confidence", type=float, default=defaults.min_confidence, help="confidence floor")
    p.add_argument("--param-budget", type=int, default=None, help="budget of runs whose job sets none")
    p.add_argument(
        "--policy-dir",
        default=os.environ.get(POLICY_DIR_ENV) or None,
        help=f"directory of learned policies, NAME.pt each (env {POLICY_DIR_ENV}); loading one needs the gnn extra",
    )
    p.add_argument(
        "--lease-ms",
        type=int,
        default=int(os.environ.get("ESPER_LEASE_MS") or DEFAULT_LEASE_MS),
        help=f"run lease in ms: a dead replica's runs move after this (env ESPER_LEASE_MS; default {DEFAULT_LEASE_MS})",
    )
    return p


async def run_service(
    settings: ServiceSettings,
    safety_config: SafetyConfig,
    lease_ms: int = DEFAULT_LEASE_MS,
    registry: PolicyRegistry | None = None,
) -> int:
    bus = RedisBus.from_url(settings.redis_url)
    store = RunStore.from_url(settings.redis_url)
    metrics = TamiyoMetrics()
    registry = registry or PolicyRegistry()
    collector = HealthCollector(store, policies=registry, policy_factory=registry.make)
    safety = SafetyMonitor(safety_config)
    urza_url = os.environ.get("ESPER_URZA_URL")  # set: ask for kernels when a run's graph arrives
    kernels = KernelPrefetch(bus, UrzaKernelStatus(urza_url, settings.api_token)) if urza_url else None
    loop = DecisionLoop(collector, safety, bus, metrics, kernels)
    control = RunControl(collector, safety, bus, metrics)
    shards = RunShards(loop, bus, settings.consumer, lease_ms=lease_ms)
    readiness = BusReadiness(bus.ping)
    restoring: list[str | None] = ["restoring run states from Redis"]

    async def consume() -> None:
        delay = 0.1
        while True:
            try:
                restored = await collector.restore()
                break
            except (OSError, RedisConnectionError) as exc:  # Redis not up yet: wait for it instead of dying
                restoring[0] = f"waiting for Redis at {settings.redis_url}: {exc}"
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
        log.info("tamiyo: %d run(s) restored; consuming as %s", restored, settings.consumer)
        restoring[0] = None
        async with readiness.consuming():
            await shards.run()

    async def shutdown() -> None:
        await shards.stop()

    app = create_app(
        control,
        api_token=settings.api_token,
        ready=lambda: restoring[0] or readiness.not_ready(),
        registries=(REGISTRY, metrics.registry),
        read_token=settings.read_token,
        max_body_bytes=settings.max_body_bytes,
        cors_origins=settings.cors_origins,
    )
    if settings.api_token is None:
        log.warning("tamiyo: ESPER_API_TOKEN is not set: mutating API routes answer 503")
    try:
        return await serve(
            app,
            host=settings.host,
            port=settings.port,
            loops=[consume()],
            on_shutdown=shutdown,
            log_level=settings.log_level,
        )
    finally:
        await bus.aclose()
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args, SERVICE)
    try:
        safety_config = SafetyConfig(
            max_active_seeds=args.max_active_seeds,
            max_telemetry_age_s=args.max_telemetry_age_s,
            min_confidence=args.min_confidence,
            default_param_budget=args.param_budget,
        )
    except ValueError as exc:
        raise SystemExit(f"{SERVICE}: {exc}") from None
    if args.lease_ms < 100:
        raise SystemExit(f"{SERVICE}: --lease-ms must be >= 100 (value {args.lease_ms!r})")
    configure_logging(settings)
    registry = PolicyRegistry(args.policy_dir)
    if registry.directory is not None and not registry.directory.is_dir():
        log.warning("tamiyo: policy directory %s does not exist (yet): no learned policies", registry.directory)
    return asyncio.run(run_service(settings, safety_config, args.lease_ms, registry))


if __name__ == "__main__":
    sys.exit(main())
