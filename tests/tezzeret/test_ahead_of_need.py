"""The whole kernel path: a run's ModelGraph -> Tamiyo's prefetch -> Tezzeret -> Urza -> germination finds every kernel.

Real Redis, a real Urza (HTTP on a port), Tezzeret's worker on the bus, the
model graph Tolaria would publish for the default host, and Kasmina's loader.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from prometheus_client import CollectorRegistry
from urza_server import TOKEN, UrzaServer

from esper.kasmina import ConvHost1D, wrap
from esper.kasmina.graph import describe
from esper.kasmina.kernels import KernelCache, KernelLoader, KernelMetrics, UrzaSource
from esper.leyline import streams as ls
from esper.oona import ConsumerOptions, RedisBus
from esper.tamiyo.service.kernels import KernelPrefetch, UrzaKernelStatus
from esper.tezzeret.urza import UrzaClient
from esper.tezzeret.worker import Tezzeret, TezzeretMetrics

from .test_worker import results

pytestmark = pytest.mark.slow


def test_kernels_requested_when_the_graph_arrives_are_ready_at_germination(clean_redis_url, tmp_path):
    torch.manual_seed(0)
    model = wrap(ConvHost1D(channels=8), {"s1": ConvHost1D.DEFAULT_SLOTS["s1"]})
    model.probe(torch.randn(2, 40))
    graph = describe(model, torch.randn(2, 40))
    options = graph.slots[0].options
    assert options  # what Tamiyo may choose from at s1
    urza = UrzaServer(tmp_path / "urza").start()
    try:

        async def scenario() -> int:
            bus = RedisBus.from_url(clean_redis_url)
            published = await KernelPrefetch(bus, UrzaKernelStatus(urza.url, TOKEN)).on_graph(graph, "run-1")
            tezzeret = Tezzeret(bus, UrzaClient(urza.url, TOKEN), TezzeretMetrics(), repeats=1)
            consumer = ConsumerOptions(batch_size=1, block_ms=100, claim_idle_ms=60_000)
            subscription = bus.subscribe(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, "t1", tezzeret.handle, consumer)
            task = asyncio.ensure_future(subscription.run())
            for _ in range(2400):
                if len(results(clean_redis_url)) >= len(published):
                    break
                await asyncio.sleep(0.05)
            await subscription.stop()
            await task
            await bus.aclose()
            return len(published)

        assert asyncio.run(scenario()) == len(options)
        assert all(r.status.value == "ok" for r in results(clean_redis_url))
        loader = KernelLoader(UrzaSource(urza.url), KernelCache(tmp_path / "cache"), KernelMetrics(CollectorRegistry()))
        for option in options:
            build = loader.seed_for_slot(model, "s1", option.blueprint, option.config)
            assert build is not None and build.failure is None, build.error if build else None
            assert build.origin == "urza"
    finally:
        urza.stop()
