"""Germination from compiled kernels against eager construction, and the kernel's training step against eager.

A real Urza (the HTTP app on uvicorn, SQLite, a blob directory in a temp
folder) holds one kernel per blueprint, compiled and validated by Tezzeret's
compiler, at the features of the default host's first slot (ConvHost1D with 8
channels on MNIST-1D: (8, 19), conv1d). Three ways to make a seed, alternating
in every round (this machine is shared and noisy; medians are reported):

* cold: a fresh loader with an empty cache: fetch the record and the artifact
  from Urza over HTTP, verify its sha256, decode it, trial forward, copy;
* warm: the same loader again: index in memory, artifact read from the cache
  file and re-hashed (sha256, every load), decoded program reused, fresh
  parameters drawn from the RNG as eager construction draws them (the default,
  ``rng_init``: a run makes the same numbers with or without kernels), by
  replaying the recorded ops of the blueprint's initialization rather than
  building its modules (``esper.kasmina.kernels.replay``);
* warm, compiled init: the same with ``rng_init=False`` (the seed starts from
  the artifact's weights: no eager build at all);
* eager: ``get_blueprint(...).build(...)`` as germination does without kernels.

Then the training step (forward + backward, batch 100 as the default job
trains) of a kernel seed against the eager seed of the same blueprint,
alternating; ``step_ratio`` is the median over the blueprints of their
kernel/eager median ratios. The last line is JSON with ``cold_ms``, ``warm_ms``,
``eager_ms`` (medians, for ``--blueprint``) and ``step_ratio``.
Targets: warm_ms <= 0.5, step_ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import uvicorn
from prometheus_client import CollectorRegistry

from esper.kasmina.blueprints import get_blueprint, list_blueprints
from esper.kasmina.kernels import KernelCache, KernelLoader, KernelMetrics, UrzaSource
from esper.tezzeret.compiler import compile_kernel, time_step
from esper.tezzeret.urza import UrzaClient
from esper.urza.app import create_app
from esper.urza.blobs import LocalBlobStore
from esper.urza.db import open_database

SHAPE, LAYOUT = (8, 19), "conv1d"
TOKEN = "bench"


def start_urza(root: Path, port: int) -> uvicorn.Server:
    _, sessions = open_database(f"sqlite:///{root / 'urza.db'}")
    app = create_app(sessions, LocalBlobStore(root / "blobs"), TOKEN, registries=(CollectorRegistry(),))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server


def publish(client: UrzaClient, blueprint: str) -> None:
    """What Tezzeret does for one request: register, compile/validate/measure, upload, report."""
    kernel = client.register({"blueprint_id": blueprint, "input_shape": list(SHAPE), "layout": LAYOUT})
    compiled = compile_kernel(blueprint, SHAPE, layout=LAYOUT, repeats=3, seed=int(kernel["kernel_id"][1:9], 16))
    sha = client.upload(compiled.artifact)
    client.report(
        kernel["kernel_id"], {"status": "validated", "sha256": sha, "artifact_format": compiled.artifact_format}
    )


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blueprint", default="conv_heavy", help="the blueprint germination latency is measured on")
    parser.add_argument("--rounds", type=int, default=200, help="germination rounds (cold, warm, eager each)")
    parser.add_argument("--cold-every", type=int, default=10, help="a cold load every N rounds (each decodes anew)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per blueprint and variant")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = least noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    blueprints = [b for b in list_blueprints() if LAYOUT in get_blueprint(b).layer_kinds]

    root = Path(tempfile.mkdtemp(prefix="kernel-bench-"))
    with socket.socket() as sock:  # a free port for this run's Urza
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = start_urza(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        client = UrzaClient(url, TOKEN)
        for blueprint in blueprints:
            publish(client, blueprint)
        client.close()
        metrics = KernelMetrics(CollectorRegistry())
        source = UrzaSource(url)
        spec = get_blueprint(args.blueprint)
        warm_loader = KernelLoader(source, KernelCache(root / "warm-cache"), metrics)
        assert warm_loader.seed(args.blueprint, {}, SHAPE, LAYOUT).origin == "urza"
        compiled_loader = KernelLoader(source, KernelCache(root / "warm-cache"), metrics, rng_init=False)
        cold, warm, warm_compiled, eager = [], [], [], []
        clock = time.perf_counter
        for i in range(args.rounds):
            if i % args.cold_every == 0:
                cache_dir = root / f"cold-{i}"
                loader = KernelLoader(source, KernelCache(cache_dir), metrics)
                t0 = clock()
                build = loader.seed(args.blueprint, {}, SHAPE, LAYOUT)
                cold.append(clock() - t0)
                assert build.origin == "urza", build.error
                shutil.rmtree(cache_dir)
            t0 = clock()
            build = warm_loader.seed(args.blueprint, {}, SHAPE, LAYOUT)
            warm.append(clock() - t0)
            assert build.origin == "cache", build.error
            t0 = clock()
            build = compiled_loader.seed(args.blueprint, {}, SHAPE, LAYOUT)
            warm_compiled.append(clock() - t0)
            assert build.origin == "cache", build.error
            t0 = clock()
            spec.build(SHAPE, {}, layer_kind=LAYOUT).to(device="cpu", dtype=torch.float32)
            eager.append(clock() - t0)

        ratios = {}
        x = torch.randn(args.batch, *SHAPE)
        for blueprint in blueprints:
            kernel = warm_loader.seed(blueprint, {}, SHAPE, LAYOUT)
            assert kernel.origin in ("urza", "cache"), kernel.error
            plain = get_blueprint(blueprint).build(SHAPE, layer_kind=LAYOUT)
            for _ in range(10):
                time_step(kernel.module, x), time_step(plain, x)
            k_times, e_times = [], []
            for i in range(args.steps):
                order = ((kernel.module, k_times), (plain, e_times))
                for module, out in order if i % 2 else order[::-1]:
                    out.append(sum(time_step(module, x)))
            ratios[blueprint] = statistics.median(k_times) / statistics.median(e_times)
            print(
                f"{blueprint:13s} step: kernel {ms(k_times) * 1e3:7.1f} us  eager {ms(e_times) * 1e3:7.1f} us  "
                f"ratio {ratios[blueprint]:.3f}"
            )
    finally:
        server.should_exit = True
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "blueprint": args.blueprint,
        "shape": list(SHAPE),
        "cold_ms": round(ms(cold), 3),
        "warm_ms": round(ms(warm), 4),
        "eager_ms": round(ms(eager), 4),
        "warm_p90_ms": round(statistics.quantiles(warm, n=10)[-1] * 1e3, 4),
        "warm_compiled_init_ms": round(ms(warm_compiled), 4),
        "warm_vs_eager": round(ms(warm) / ms(eager), 3),
        "step_ratio": round(statistics.median(ratios.values()), 3),
        "step_ratio_by_blueprint": {k: round(v, 3) for k, v in ratios.items()},
        "cold_samples": len(cold),
        "warm_samples": len(warm),
        "batch": args.batch,
        "targets": {"warm_ms": 0.5, "step_ratio": 1.05},
    }
    print(
        f"germination ({args.blueprint} at {SHAPE}): cold {result['cold_ms']} ms, warm {result['warm_ms']} ms "
        f"({result['warm_compiled_init_ms']} ms with compiled init), "
        f"eager {result['eager_ms']} ms; step ratio (median over {len(ratios)} blueprints) {result['step_ratio']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
