"""Tamiyo asks for kernels ahead of need: a graph's slot options not yet in Urza become compile requests."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import redis
from urza_server import TOKEN, UrzaServer, free_port

from esper.leyline import BlueprintOption, ModelGraph, SlotOptions, decode
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest
from esper.oona import RedisBus
from esper.tamiyo.service.kernels import KernelPrefetch, UrzaKernelStatus, compile_requests

CONV = [BlueprintOption(blueprint="conv_light", config={"kernel_size": 3}, params=200)]
CONV += [BlueprintOption(blueprint="depthwise", config={"kernel_size": 5}, params=120)]


def graph() -> ModelGraph:
    """Two slots with the same features (their options are the same kernels) and one with others."""
    slots = [
        SlotOptions(slot_id="s1", module="a", shape=[8, 19], layout="conv1d", options=CONV),
        SlotOptions(slot_id="s2", module="b", shape=[8, 19], layout="conv1d", options=CONV),
        SlotOptions(slot_id="s3", module="c", shape=[8, 10], layout="conv1d", options=CONV[:1]),
    ]
    return ModelGraph(epoch=0, params_total=858, nodes=[], slots=slots)


def requested(redis_url: str) -> list[CompileRequest]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [decode(f[ls.ENVELOPE_FIELD.encode()]).payload for _, f in client.xrange(ls.COMPILE_REQUESTS)]
    finally:
        client.close()


def prefetch(redis_url: str, store: UrzaKernelStatus | None, graphs: int = 1) -> list[int]:
    async def go() -> list[int]:
        bus = RedisBus.from_url(redis_url)
        try:
            prefetcher = KernelPrefetch(bus, store)
            return [len(await prefetcher.schedule(graph(), "run-1")) for _ in range(graphs)]
        finally:
            await bus.aclose()

    return asyncio.run(go())


def test_one_request_per_distinct_kernel_in_the_graph_every_slots_first_choice_first():
    requests = compile_requests(graph())
    assert [(r.blueprint_id, r.input_shape) for r in requests] == [
        ("conv_light", [8, 19]),
        ("conv_light", [8, 10]),  # s3's first option before anyone's second
        ("depthwise", [8, 19]),
    ]
    assert all(r.layout == "conv1d" and r.request_id.startswith("prefetch-k") for r in requests)


def test_kernels_urza_already_holds_are_not_requested_and_a_graph_seen_again_asks_nothing(clean_redis_url, tmp_path):
    urza = UrzaServer(tmp_path).start()
    try:
        urza.publish_kernel("conv_light", [8, 19], b"ESPERK1\ntorch.export\n...", layout="conv1d")
        store = UrzaKernelStatus(urza.url, TOKEN)
        assert prefetch(clean_redis_url, store, graphs=2) == [2, 0]
        kernels = urza.http.get("/kernels", params={"status": "requested"}).json()
        assert kernels["total"] == 2  # what was asked for is registered in Urza as wanted
    finally:
        urza.stop()
    assert sorted((r.blueprint_id, tuple(r.input_shape)) for r in requested(clean_redis_url)) == [
        ("conv_light", (8, 10)),
        ("depthwise", (8, 19)),
    ]


def test_without_urza_every_option_is_requested(clean_redis_url):
    store = UrzaKernelStatus(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=0.5)
    assert prefetch(clean_redis_url, store) == [3]
    assert len(requested(clean_redis_url)) == 3


@pytest.mark.parametrize("module", ["esper.tamiyo.service.kernels"])
def test_the_prefetch_module_imports_no_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_the_decision_loop_asks_for_kernels_when_a_graph_arrives(clean_redis_url):
    from esper.leyline import Envelope
    from esper.tamiyo.collector import HealthCollector, RunStore
    from esper.tamiyo.policies import DEFAULT_SAFETY
    from esper.tamiyo.safety import SafetyMonitor
    from esper.tamiyo.service.loop import DecisionLoop

    async def go() -> None:
        bus, store = RedisBus.from_url(clean_redis_url), RunStore.from_url(clean_redis_url)
        prefetch = KernelPrefetch(bus, None)
        loop = DecisionLoop(HealthCollector(store), SafetyMonitor(DEFAULT_SAFETY), bus, kernels=prefetch)
        try:
            await loop.handle(Envelope(payload=graph(), run_id="run-9"))
            await asyncio.gather(*prefetch._tasks)
        finally:
            await bus.aclose()
            await store.aclose()

    asyncio.run(go())
    assert len(requested(clean_redis_url)) == 3


def test_a_kernel_stuck_compiling_is_requested_again_and_one_compiling_normally_is_not(clean_redis_url, tmp_path):
    """Its Tezzeret died mid-compile: Urza says ``compiling`` for longer than the timeout, so it is asked for again."""
    import datetime

    import sqlalchemy

    urza = UrzaServer(tmp_path).start()
    one = ModelGraph(
        epoch=0,
        params_total=858,
        nodes=[],
        slots=[SlotOptions(slot_id="s1", module="a", shape=[8, 19], layout="conv1d", options=CONV[:1])],
    )
    body = {"blueprint_id": "conv_light", "config": {"kernel_size": 3}, "input_shape": [8, 19], "layout": "conv1d"}
    kernel_id = urza.http.post("/kernels", json=body).json()["kernel_id"]
    urza.http.patch(f"/kernels/{kernel_id}", json={"status": "compiling"}).raise_for_status()  # a Tezzeret took it

    def backdate(seconds: float) -> None:  # the Tezzeret died this long ago
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
        with urza.engine.begin() as db:
            db.execute(
                sqlalchemy.text("UPDATE kernels SET updated_at = :t WHERE kernel_id = :k"), {"t": since, "k": kernel_id}
            )

    async def go() -> tuple[list[int], int, int, int]:
        bus = RedisBus.from_url(clean_redis_url)
        try:
            prefetcher = KernelPrefetch(bus, UrzaKernelStatus(urza.url, TOKEN), stuck_after_s=60, recheck_s=0.05)
            first = len(await prefetcher.on_graph(one, "run-1"))  # compiling for a moment: left to its Tezzeret
            await asyncio.sleep(0.3)  # sweeps ran: still not stuck
            fresh = len(requested(clean_redis_url))
            backdate(120)
            await asyncio.sleep(0.5)  # the next sweep finds it stuck and asks again, once
            stuck = len(requested(clean_redis_url))
            backdate(120)  # still stuck, but this process asked less than stuck_after_s ago: not again yet
            again = [len(await prefetcher.sweep()) for _ in range(3)]
            urza.http.patch(f"/kernels/{kernel_id}", json={"status": "failed", "error": "boom"}).raise_for_status()
            await asyncio.sleep(0.3)  # settled: no longer watched, the sweeper ends
            assert prefetcher._watched == {} and prefetcher._sweeper is not None and prefetcher._sweeper.done()
            return [first, *again], fresh, stuck, len(requested(clean_redis_url))
        finally:
            await bus.aclose()

    try:
        published, fresh, stuck, end = asyncio.run(go())
    finally:
        urza.stop()
    assert published == [0, 0, 0, 0]
    assert (fresh, stuck, end) == (0, 1, 1)
    (request,) = requested(clean_redis_url)
    assert (request.blueprint_id, request.input_shape) == ("conv_light", [8, 19])
