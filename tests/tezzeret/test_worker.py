"""Tezzeret on a real Redis with a real Urza: requests in, validated kernels and results out, failures survived."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis
from urza_server import TOKEN, UrzaServer

from esper.kasmina.kernels import KernelCache, KernelLoader, KernelMetrics, UrzaSource
from esper.leyline import Envelope, decode
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest, CompileResult, CompileStatus
from esper.oona import ConsumerOptions, RedisBus
from esper.tezzeret.urza import UrzaClient
from esper.tezzeret.worker import Tezzeret, TezzeretMetrics


@pytest.fixture
def urza(tmp_path) -> Iterator[UrzaServer]:
    server = UrzaServer(tmp_path / "urza").start()
    yield server
    server.stop()


def results(redis_url: str) -> list[CompileResult]:
    client = redis.Redis.from_url(redis_url)
    try:
        out = [decode(fields[ls.ENVELOPE_FIELD.encode()]).payload for _, fields in client.xrange(ls.COMPILE_RESULTS)]
    finally:
        client.close()
    assert all(isinstance(r, CompileResult) for r in out)
    return out  # type: ignore[return-value]


async def serve_requests(
    redis_url: str, urza_url: str, requests: list[CompileRequest], metrics: TezzeretMetrics, repeats: int = 2
) -> None:
    """Run one Tezzeret until it has answered ``requests`` (published before it starts)."""
    bus = RedisBus.from_url(redis_url)
    for request in requests:
        await bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=request, run_id="run-1"))
    tezzeret = Tezzeret(bus, UrzaClient(urza_url, TOKEN), metrics, repeats=repeats)
    options = ConsumerOptions(batch_size=1, block_ms=100, claim_idle_ms=60_000)
    subscription = bus.subscribe(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, "tezzeret-test", tezzeret.handle, options)
    task = asyncio.ensure_future(subscription.run())
    try:
        for _ in range(600):
            if len(results(redis_url)) >= len(requests):
                break
            await asyncio.sleep(0.05)
        for _ in range(600):  # and the timings that follow in the background
            if not tezzeret._timings and (tezzeret._timer is None or tezzeret._timer.done()):
                break
            await asyncio.sleep(0.05)
    finally:
        await subscription.stop()
        await task
        await bus.aclose()


def answered(metrics: TezzeretMetrics, status: str) -> float:
    return float(metrics.results.labels(status)._value.get())


def test_a_request_becomes_a_validated_kernel_in_urza_that_kasmina_loads(clean_redis_url, urza, tmp_path):
    metrics = TezzeretMetrics()
    request = CompileRequest(request_id="r1", blueprint_id="conv_light", input_shape=[8, 19], layout="conv1d")
    asyncio.run(serve_requests(clean_redis_url, urza.url, [request], metrics))
    [result] = results(clean_redis_url)
    assert result.status is CompileStatus.OK and result.request_id == "r1", result.error
    kernel = result.kernel
    assert kernel is not None and kernel.kernel_id == result.kernel_id
    assert kernel.artifact_format == "torch.export" and kernel.params == 200 and kernel.max_grad_error is not None
    stored = httpx.get(f"{urza.url}/kernels/{kernel.kernel_id}").json()
    assert stored["status"] == "validated" and stored["sha256"] == kernel.sha256
    assert stored["latency_us"] and stored["backward_latency_us"] and stored["memory_bytes"]  # timed afterwards
    loader = KernelLoader(UrzaSource(urza.url), KernelCache(tmp_path / "cache"), KernelMetrics(None))
    build = loader.seed("conv_light", {}, (8, 19), "conv1d")
    assert build.origin == "urza" and build.kernel_id == kernel.kernel_id, build.error


def test_the_same_request_twice_yields_one_artifact(clean_redis_url, urza):
    metrics = TezzeretMetrics()
    first = CompileRequest(request_id="a", blueprint_id="mlp", input_shape=[16])
    spelled_out = CompileRequest(request_id="b", blueprint_id="mlp", input_shape=[16], config={"expansion": 2.0})
    asyncio.run(serve_requests(clean_redis_url, urza.url, [first, spelled_out], metrics))
    a, b = results(clean_redis_url)
    assert a.status is b.status is CompileStatus.OK
    assert a.kernel is not None and b.kernel is not None
    assert (a.kernel.kernel_id, a.kernel.sha256) == (b.kernel.kernel_id, b.kernel.sha256)
    assert metrics.seconds._sum.get() > 0 and sum(1 for _ in urza.blobs.root.glob("??/*")) == 1
    assert httpx.get(f"{urza.url}/kernels").json()["total"] == 1


def test_a_failing_blueprint_gives_a_failed_result_and_tezzeret_goes_on(clean_redis_url, urza, bad_blueprints):
    dropout, broken = bad_blueprints
    for name in bad_blueprints:
        body = {"blueprint_id": name, "family": "test", "layer_kinds": ["linear"]}
        urza.http.post("/blueprints", json=body).raise_for_status()
    metrics = TezzeretMetrics()
    requests = [
        CompileRequest(request_id="broken", blueprint_id=broken, input_shape=[16]),
        CompileRequest(request_id="dropout", blueprint_id=dropout, input_shape=[16]),
        CompileRequest(request_id="unknown", blueprint_id="not_in_urza", input_shape=[16]),
        CompileRequest(request_id="fine", blueprint_id="lowrank", input_shape=[16]),
    ]
    asyncio.run(serve_requests(clean_redis_url, urza.url, requests, metrics))
    by_id = {r.request_id: r for r in results(clean_redis_url)}
    assert by_id["broken"].status is CompileStatus.FAILED and "recipe is broken" in (by_id["broken"].error or "")
    assert by_id["dropout"].status is CompileStatus.FAILED and "Dropout" in (by_id["dropout"].error or "")
    assert by_id["unknown"].status is CompileStatus.FAILED and "blueprint_id" in (by_id["unknown"].error or "")
    assert by_id["fine"].status is CompileStatus.OK
    failed = httpx.get(f"{urza.url}/kernels", params={"status": "failed"}).json()
    assert {k["blueprint_id"] for k in failed["items"]} == {broken, dropout}
    assert all(k["error"] for k in failed["items"])
    assert (answered(metrics, "failed"), answered(metrics, "ok")) == (3, 1)


def test_urza_down_leaves_the_request_pending_for_redelivery(clean_redis_url, tmp_path):
    from urza_server import free_port

    async def scenario() -> int:
        bus = RedisBus.from_url(clean_redis_url)
        await bus.publish(
            ls.COMPILE_REQUESTS,
            Envelope(payload=CompileRequest(request_id="r", blueprint_id="mlp", input_shape=[4]), run_id="x"),
        )
        client = UrzaClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout_s=1)
        tezzeret = Tezzeret(bus, client, repeats=1, urza_wait_s=0.5)
        options = ConsumerOptions(batch_size=1, block_ms=100, retry_delay_ms=10_000, claim_idle_ms=60_000)
        subscription = bus.subscribe(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, "t", tezzeret.handle, options)
        task = asyncio.ensure_future(subscription.run())
        await asyncio.sleep(1.5)
        await subscription.stop()
        await task
        pending = await bus.client.xpending(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET)
        await bus.aclose()
        return int(pending["pending"])

    assert asyncio.run(scenario()) == 1
    assert results(clean_redis_url) == []


def test_a_request_waits_for_urza_to_come_up(clean_redis_url, tmp_path):
    urza = UrzaServer(tmp_path / "late")  # its port is chosen; it starts a second after Tezzeret

    async def scenario() -> None:
        bus = RedisBus.from_url(clean_redis_url)
        request = CompileRequest(request_id="late", blueprint_id="norm", input_shape=[8])
        await bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=request, run_id="x"))
        tezzeret = Tezzeret(bus, UrzaClient(urza.url, TOKEN, timeout_s=1), repeats=1, urza_wait_s=30)
        options = ConsumerOptions(batch_size=1, block_ms=100, claim_idle_ms=60_000)
        subscription = bus.subscribe(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, "t", tezzeret.handle, options)
        task = asyncio.ensure_future(subscription.run())
        await asyncio.sleep(1.0)
        await asyncio.to_thread(urza.start)
        for _ in range(400):
            if results(clean_redis_url):
                break
            await asyncio.sleep(0.05)
        await subscription.stop()
        await task
        await bus.aclose()

    try:
        asyncio.run(scenario())
    finally:
        urza.stop()
    [result] = results(clean_redis_url)
    assert result.status is CompileStatus.OK, result.error


def test_a_kernel_is_served_validated_before_it_is_timed_and_its_timings_follow(
    clean_redis_url, urza, tmp_path, monkeypatch
):
    """Timing takes most of a compile: the result is published and Kasmina can load the kernel while it is timed,
    and the timing waits while requests are answered, so a graph's kernels all become usable first."""
    import esper.tezzeret.worker as worker

    seen: list[tuple[int, list[int]]] = []
    real = worker.time_rounds

    def timing(kernel, rounds, warmup):
        found = httpx.get(f"{urza.url}/kernels", params={"blueprint_id": "conv_light", "status": "validated"}).json()
        seen.append((len(results(clean_redis_url)), sorted(k["input_shape"][1] for k in found["items"])))
        return real(kernel, rounds, warmup)

    monkeypatch.setattr(worker, "time_rounds", timing)
    requests = [
        CompileRequest(request_id=f"r-{n}", blueprint_id="conv_light", input_shape=[8, n], layout="conv1d")
        for n in (23, 24, 25)
    ]
    asyncio.run(serve_requests(clean_redis_url, urza.url, requests, TezzeretMetrics(), repeats=20))
    assert all(r.status is CompileStatus.OK for r in results(clean_redis_url))
    # 10 slices of 2 rounds per kernel; between two requests at most a slice runs, so the first kernel's
    # timing is far from done when the last kernel is validated and answered
    early = [s for s in seen if s[0] < 3]
    assert len(seen) == 30 and len(early) <= 4, seen
    assert seen[-1] == (3, [23, 24, 25])
    loader = KernelLoader(UrzaSource(urza.url), KernelCache(tmp_path / "cache"), KernelMetrics(None))
    for result in results(clean_redis_url):
        stored = httpx.get(f"{urza.url}/kernels/{result.kernel_id}").json()
        assert stored["latency_us"] and stored["backward_latency_us"] and stored["memory_bytes"]
        assert stored["sha256"] == result.kernel.sha256
        shape = tuple(stored["input_shape"])
        assert loader.seed("conv_light", {}, shape, "conv1d").origin == "urza"
