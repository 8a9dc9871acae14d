"""Germinating from compiled kernels: through Urza and a verified LRU cache, with eager fallback for every failure.

Urza is the real app on a real port (``tests/urza_server.py``). The one
stand-in is a store whose bytes are corrupted in transit (a tiny HTTP server
serving a kernel record with other bytes), because Urza itself never serves a
blob that fails its checksum.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from urza_server import UrzaServer, free_port

from esper.kasmina import ConvHost1D, MorphogeneticModel, wrap
from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.kernels import (
    KernelCache,
    KernelLoader,
    KernelMetrics,
    UrzaSource,
    compile_seed,
)
from esper.leyline import EventKind, SeedStage
from esper.leyline.compile import KernelFailure

SHAPE = (8, 19)  # ConvHost1D(channels=8): the features at its slot s1


def artifact_for(blueprint: str, shape: tuple[int, ...], layout: str | None = None) -> bytes:
    torch.manual_seed(1)
    module = get_blueprint(blueprint).build(shape, layer_kind=layout)
    data, _ = compile_seed(module, torch.randn((4, *shape)))
    return data


@pytest.fixture(scope="module")
def urza(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UrzaServer]:
    server = UrzaServer(tmp_path_factory.mktemp("urza")).start()
    server.publish_kernel("conv_light", list(SHAPE), artifact_for("conv_light", SHAPE), layout="conv1d")
    yield server
    server.stop()


@pytest.fixture
def metrics() -> KernelMetrics:
    return KernelMetrics(CollectorRegistry())


def loader_for(url: str, tmp_path: Path, metrics: KernelMetrics, max_bytes: int = 1 << 26) -> KernelLoader:
    return KernelLoader(UrzaSource(url, timeout_s=2.0), KernelCache(tmp_path / "cache", max_bytes), metrics)


def count(metric: object, *labels: str) -> float:
    target = metric.labels(*labels) if labels else metric  # type: ignore[attr-defined]
    return float(target._value.get())


def model() -> MorphogeneticModel:
    torch.manual_seed(0)
    m = wrap(ConvHost1D(channels=8), ConvHost1D.DEFAULT_SLOTS)
    m.probe(torch.randn(2, 40))
    return m


def test_a_cold_load_fetches_from_urza_and_a_warm_one_comes_from_the_cache(urza, tmp_path, metrics):
    loader = loader_for(urza.url, tmp_path, metrics)
    cold = loader.seed("conv_light", {}, SHAPE, "conv1d")
    warm = loader.seed("conv_light", {}, SHAPE, "conv1d")
    assert (cold.origin, warm.origin, cold.failure, warm.failure) == ("urza", "cache", None, None)
    assert count(metrics.cache_misses) == 1 and count(metrics.cache_hits) == 1
    assert metrics.load_seconds.labels("hit")._sum.get() > 0  # type: ignore[attr-defined]
    # A fresh loader over the same directory finds the kernel without Urza (the index is on disk).
    offline = KernelLoader(UrzaSource(f"http://127.0.0.1:{free_port()}"), KernelCache(tmp_path / "cache"), metrics)
    assert offline.seed("conv_light", {}, SHAPE, "conv1d").origin == "cache"


def test_a_kernel_seed_computes_like_the_blueprint_and_trains(urza, tmp_path, metrics):
    seed = loader_for(urza.url, tmp_path, metrics).seed("conv_light", {}, SHAPE, "conv1d").module
    x = torch.randn(5, *SHAPE)
    torch.testing.assert_close(seed(x), x)  # a fresh residual seed is the identity
    optimizer = torch.optim.SGD(seed.parameters(), lr=0.1)
    target = torch.randn(5, *SHAPE)
    before = float(((seed(x) - target) ** 2).mean().detach())
    for _ in range(5):
        optimizer.zero_grad()
        ((seed(x) - target) ** 2).mean().backward()
        optimizer.step()
    assert float(((seed(x) - target) ** 2).mean().detach()) < before


def test_every_load_owns_its_parameters(urza, tmp_path, metrics):
    loader = loader_for(urza.url, tmp_path, metrics)
    a = loader.seed("conv_light", {}, SHAPE, "conv1d").module
    b = loader.seed("conv_light", {}, SHAPE, "conv1d").module
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))


def test_germination_uses_the_kernel_and_the_model_trains_with_it(urza, tmp_path, metrics):
    m = model()
    build = loader_for(urza.url, tmp_path, metrics).seed_for_slot(m, "s1", "conv_light", {})
    assert build is not None and build.origin == "urza"
    m.germinate("s1", "conv_light", {}, epoch=0, reason="test", seed=build.module)
    m.advance("s1", epoch=0, reason="train")
    assert m.slot("s1").stage is SeedStage.TRAINING
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 40)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in m.seed_parameters("s1"))
    # State dicts keep the eager names, so checkpoints restore into an eagerly built seed.
    eager = get_blueprint("conv_light").build(SHAPE, layer_kind="conv1d")
    assert list(build.module.state_dict()) == list(eager.state_dict())


def test_no_kernel_is_fetched_where_germination_would_refuse(urza, tmp_path, metrics):
    m = model()
    loader = loader_for(urza.url, tmp_path, metrics)
    assert loader.seed_for_slot(m, "nope", "conv_light", {}) is None
    assert loader.seed_for_slot(m, "s1", "no_such_blueprint", {}) is None
    with pytest.raises(ValueError, match="kernel_size"):
        loader.seed("conv_light", {"kernel_size": 2}, SHAPE, "conv1d")
    assert count(metrics.cache_misses) == 0


def assert_fallback(build, failure: KernelFailure, metrics: KernelMetrics) -> None:
    assert build.origin == "eager" and build.failure is failure, build.error
    assert count(metrics.fallbacks, failure.value) == 1
    event = build.fallback_event(epoch=3, slot_id="s1")
    assert event is not None and event.kind == EventKind.KERNEL_FALLBACK
    assert event.attributes["failure"] == failure.value and event.slot_id == "s1"
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(build.module(x), x)  # the eager seed works


def test_urza_down_falls_back_to_eager(tmp_path, metrics):
    loader = loader_for(f"http://127.0.0.1:{free_port()}", tmp_path, metrics)
    assert_fallback(loader.seed("conv_light", {}, SHAPE, "conv1d"), KernelFailure.URZA_UNAVAILABLE, metrics)


def test_a_kernel_urza_does_not_have_falls_back_to_eager(urza, tmp_path, metrics):
    loader = loader_for(urza.url, tmp_path, metrics)
    assert_fallback(loader.seed("conv_light", {}, (8, 41), "conv1d"), KernelFailure.NOT_FOUND, metrics)


def test_a_corrupt_artifact_falls_back_to_eager(urza, tmp_path, metrics):
    urza.publish_kernel("depthwise", list(SHAPE), b"ESPERK1\ntorch.export\nnot a zip at all", layout="conv1d")
    loader = loader_for(urza.url, tmp_path, metrics)
    assert_fallback(loader.seed("depthwise", {}, SHAPE, "conv1d"), KernelFailure.CORRUPT_ARTIFACT, metrics)
    assert not list((tmp_path / "cache" / "index").iterdir())  # not remembered: a repaired kernel is fetched again


def test_an_artifact_for_another_shape_falls_back_to_eager(urza, tmp_path, metrics):
    # Registered for 16 channels, compiled for 8: the trial forward on the slot's shape catches it.
    urza.publish_kernel("se_attention", [16, 19], artifact_for("se_attention", SHAPE), layout="conv1d")
    loader = loader_for(urza.url, tmp_path, metrics)
    build = loader.seed("se_attention", {}, (16, 19), "conv1d")
    assert build.failure is KernelFailure.SHAPE_MISMATCH, build.error
    assert count(metrics.fallbacks, "shape_mismatch") == 1 and build.module(torch.randn(2, 16, 19)).shape == (2, 16, 19)


class CorruptingStore(BaseHTTPRequestHandler):
    """Serves Urza's answers but flips a byte of every artifact (a broken proxy or object store)."""

    upstream = ""

    def do_GET(self) -> None:
        import urllib.request

        with urllib.request.urlopen(self.upstream + self.path) as response:
            body = bytearray(response.read())
        if self.path.endswith("/artifact"):
            body[-1] ^= 0xFF
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(bytes(body))

    def log_message(self, *args: object) -> None:
        pass


def test_a_checksum_mismatch_falls_back_to_eager_and_caches_nothing(urza, tmp_path, metrics):
    CorruptingStore.upstream = urza.url
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), CorruptingStore)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        loader = loader_for(f"http://127.0.0.1:{proxy.server_address[1]}", tmp_path, metrics)
        build = loader.seed("conv_light", {}, SHAPE, "conv1d")
    finally:
        proxy.shutdown()
    assert_fallback(build, KernelFailure.CHECKSUM_MISMATCH, metrics)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_file()]


def test_a_cached_file_that_rots_is_detected_and_fetched_again(urza, tmp_path, metrics):
    loader = loader_for(urza.url, tmp_path, metrics)
    loader.seed("conv_light", {}, SHAPE, "conv1d")
    cached = next(p for p in (tmp_path / "cache").iterdir() if p.is_file())
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    build = loader.seed("conv_light", {}, SHAPE, "conv1d")
    assert build.origin == "urza" and build.failure is None
    assert count(metrics.cache_misses) == 2


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    import hashlib

    cache = KernelCache(tmp_path, max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    names = [hashlib.sha256(b).hexdigest() for b in blobs]
    cache.put(names[0], blobs[0])
    cache.put(names[1], blobs[1])
    assert cache.get(names[0]) == blobs[0]  # 0 is now the most recently used
    cache.put(names[2], blobs[2])
    assert names[1] not in cache and cache.get(names[1]) is None
    assert cache.get(names[0]) == blobs[0] and cache.get(names[2]) == blobs[2]
    assert cache.size_bytes <= 250
    with pytest.raises(ValueError, match="hashes to"):
        cache.put(names[0], blobs[1])


def test_a_kernel_not_yet_validated_falls_back_to_eager(urza, tmp_path, metrics):
    urza.http.post("/kernels", json={"blueprint_id": "bottleneck", "input_shape": list(SHAPE)}).raise_for_status()
    loader = loader_for(urza.url, tmp_path, metrics)
    build = loader.seed("bottleneck", {}, SHAPE, "conv1d")
    assert build.failure is KernelFailure.NOT_VALIDATED and json.loads(json.dumps(build.error))


def test_germinate_through_the_loader_uses_the_kernel_and_reports_nothing(urza, tmp_path, metrics):
    m, events = model(), []
    loader = loader_for(urza.url, tmp_path, metrics)
    event = loader.germinate(m, "s1", "conv_light", {}, 2, "grow", events.append)
    assert event.to_stage is SeedStage.GERMINATED and events == []
    assert count(metrics.cache_misses) == 1 and m.slot("s1").blueprint == "conv_light"


def test_germinate_through_the_loader_with_urza_down_germinates_eagerly_and_reports_it(tmp_path, metrics):
    m, events = model(), []
    loader = loader_for(f"http://127.0.0.1:{free_port()}", tmp_path, metrics)
    loader.germinate(m, "s1", "conv_light", {}, 2, "grow", events.append)
    assert m.slot("s1").stage is SeedStage.GERMINATED
    [event] = events
    assert (event.kind, event.epoch, event.slot_id) == (EventKind.KERNEL_FALLBACK, 2, "s1")
    assert event.attributes["failure"] == "urza_unavailable"


def test_a_kernel_seed_starts_from_the_same_random_weights_as_eager_construction(urza, tmp_path, metrics):
    eager_loader = loader_for(f"http://127.0.0.1:{free_port()}", tmp_path / "down", metrics)  # falls back
    kernel_loader = loader_for(urza.url, tmp_path / "up", metrics)
    builds = []
    for loader in (kernel_loader, eager_loader):
        torch.manual_seed(42)
        builds.append(loader.seed("conv_light", {}, SHAPE, "conv1d"))
        builds.append(torch.rand(1))  # the RNG is left where eager construction leaves it
    torch.manual_seed(42)
    reference = get_blueprint("conv_light").build(SHAPE, layer_kind="conv1d")
    after = torch.rand(1)
    kernel, kernel_next, eager, eager_next = builds
    assert (kernel.origin, eager.origin) == ("urza", "eager")
    for build in (kernel, eager):
        for (name, p), q in zip(build.module.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    assert torch.equal(kernel_next, after) and torch.equal(eager_next, after)


def test_without_rng_init_seeds_start_from_the_compiled_weights(urza, tmp_path, metrics):
    loader = KernelLoader(UrzaSource(urza.url), KernelCache(tmp_path), metrics, rng_init=False)
    a = loader.seed("conv_light", {}, SHAPE, "conv1d").module
    b = loader.seed("conv_light", {}, SHAPE, "conv1d").module
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert all(p is not q for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_after_urza_fails_it_is_not_asked_again_for_a_while_but_cached_kernels_still_load(urza, tmp_path, metrics):
    warm = loader_for(urza.url, tmp_path, metrics)
    warm.seed("conv_light", {}, SHAPE, "conv1d")  # now cached
    server = ThreadingHTTPServer(("127.0.0.1", 0), CorruptingStore)  # answers nothing: never started
    url = f"http://127.0.0.1:{server.server_address[1]}"
    loader = KernelLoader(UrzaSource(url, timeout_s=0.5), KernelCache(tmp_path / "cache"), metrics, retry_after_s=60)
    try:
        t0 = time.monotonic()
        first = loader.seed("depthwise", {}, SHAPE, "conv1d")
        waited = time.monotonic() - t0
        t0 = time.monotonic()
        second = loader.seed("se_attention", {}, SHAPE, "conv1d")
        again = time.monotonic() - t0
    finally:
        server.server_close()
    assert first.failure is second.failure is KernelFailure.URZA_UNAVAILABLE
    assert waited >= 0.4 and again < 0.2 and "not asked again" in second.error
    assert loader.seed("conv_light", {}, SHAPE, "conv1d").origin == "cache"


def _every_blueprint_and_kind() -> list[tuple[str, tuple[int, ...], str]]:
    from esper.kasmina.blueprints import list_blueprints

    shapes = {"conv1d": (8, 19), "conv2d": (4, 6, 6), "linear": (12,), "sequence": (5, 12)}
    return [(b, shapes[k], k) for b in list_blueprints() for k in get_blueprint(b).layer_kinds if k in shapes]


@pytest.mark.parametrize(("blueprint", "shape", "kind"), _every_blueprint_and_kind())
def test_every_blueprints_initialization_replays_exactly_without_building_it(blueprint, shape, kind):
    from esper.kasmina.kernels.replay import record_init

    spec = get_blueprint(blueprint)
    resolved = spec.resolve(shape, None, layer_kind=kind)
    torch.manual_seed(0)
    _, recipe = record_init(lambda: spec.make(resolved))
    assert recipe is not None, "a recipe that proves itself exists for every catalogue blueprint"
    for seed in (1, 2):
        torch.manual_seed(seed)
        eager, after_eager = spec.make(resolved).state_dict(), torch.rand(4)
        torch.manual_seed(seed)
        replayed, after_replay = recipe.replay(), torch.rand(4)
        assert replayed.keys() == eager.keys()
        assert all(torch.equal(replayed[n], t) and replayed[n].dtype == t.dtype for n, t in eager.items())
        assert torch.equal(after_eager, after_replay)  # the same draws: the run goes on with the same numbers


def test_a_build_that_reads_a_value_back_gets_no_recipe_and_still_draws_as_usual():
    from esper.kasmina.kernels.replay import record_init

    def build() -> torch.nn.Module:
        layer = torch.nn.Linear(4, 4)
        if float(layer.weight.sum()) > 0:  # Python control flow on a drawn value: a replay could not follow it
            torch.nn.init.zeros_(layer.bias)
        return layer

    torch.manual_seed(3)
    module, recipe = record_init(build)
    after = torch.rand(2)
    torch.manual_seed(3)
    reference, reference_after = build(), torch.rand(2)
    assert recipe is None
    assert torch.equal(module.weight, reference.weight) and torch.equal(after, reference_after)


def test_warm_seeds_replay_the_eager_draws_and_a_later_fallback_keeps_them(urza, tmp_path, metrics):
    """The first seed of a kernel records the eager build; later ones replay it; all equal eager construction."""
    loader = loader_for(urza.url, tmp_path, metrics)
    spec = get_blueprint("conv_light")
    for seed in (5, 6, 7):
        torch.manual_seed(seed)
        build, after = loader.seed("conv_light", {}, SHAPE, "conv1d"), torch.rand(1)
        torch.manual_seed(seed)
        reference, reference_after = spec.build(SHAPE, layer_kind="conv1d"), torch.rand(1)
        assert build.failure is None
        assert all(torch.equal(p, q) for p, q in zip(build.module.parameters(), reference.parameters(), strict=True))
        assert all(p.requires_grad for p in build.module.parameters())
        assert torch.equal(after, reference_after)
    loader.cache.evict(loader.cache.record(build.kernel_id).sha256)  # the kernel's file is gone ...
    loader.source = None  # ... and no Urza to fetch it from: the replayed weights go to an eager seed
    torch.manual_seed(8)
    fallback, after = loader.seed("conv_light", {}, SHAPE, "conv1d"), torch.rand(1)
    torch.manual_seed(8)
    reference, reference_after = spec.build(SHAPE, layer_kind="conv1d"), torch.rand(1)
    assert fallback.origin == "eager" and fallback.failure is KernelFailure.URZA_UNAVAILABLE
    assert all(torch.equal(p, q) for p, q in zip(fallback.module.parameters(), reference.parameters(), strict=True))
    assert torch.equal(after, reference_after)
