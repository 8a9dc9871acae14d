"""Soak: back-to-back jobs through the real stack for N minutes; resources sampled over time.

    python benchmarks/soak.py --minutes 30            # the issue's soak (PNG and JSON under --out)
    python benchmarks/soak.py --minutes 3 --out /tmp/soak

Tamiyo, Tolaria and Nissa run as ``esper up`` runs them, on a private
redis-server. Jobs (short, real trainings) are submitted one after another
through the control API, each as soon as the previous one finished. Every
``--sample-s`` seconds: each service's RSS and open file descriptors, every
stream's length and every consumer group's pending count.

Targets (printed with the verdict): RSS growth under 10% after warm-up (the
first quarter of the soak: imports, caches, the first datasets), stream lengths
and pending counts bounded (the last quarter's maximum no higher than the
second quarter's, allowing for MAXLEN), open file descriptors bounded, zero errors (no failed run, no service
restart, no ERROR or Traceback in a log). JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redis_server import RedisServer, free_port

from esper.cli.stack import RestartPolicy, Stack, default_specs
from esper.leyline import streams as ls

TOKEN = "soak-token"
JOB = {
    "task": "mnist1d",
    "policy": "heuristic",
    "epochs": 6,
    "max_train_samples": 400,
    "lr": 0.0003,
    "lr_schedule": "constant",
    "lockstep": True,
    "lockstep_timeout_ms": 3000,
}


def sample(stack: Stack, client: redis.Redis, started: float) -> dict[str, Any]:
    point: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1), "rss_mb": {}, "fds": {}}
    for name, service in stack.services.items():
        try:
            proc = psutil.Process(service.pid or 0)
            point["rss_mb"][name] = round(proc.memory_info().rss / 2**20, 1)
            point["fds"][name] = proc.num_fds()
        except psutil.Error:
            continue
    point["stream_len"] = {s: int(client.xlen(s)) for s in ls.ALL_STREAMS}
    pending: dict[str, int] = {}
    for stream in ls.ALL_STREAMS:
        if not point["stream_len"][stream]:
            continue
        try:
            for info in client.xinfo_groups(stream):
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                pending[name] = pending.get(name, 0) + int(info["pending"])
        except redis.ResponseError:
            continue
    point["pending"] = pending
    return point


def quarter(points: list[dict[str, Any]], q: int) -> list[dict[str, Any]]:
    n = len(points)
    return points[q * n // 4 : (q + 1) * n // 4] or points[-1:]


def verdict(points: list[dict[str, Any]], errors: list[str], runs_failed: int) -> dict[str, Any]:
    services = sorted({s for p in points for s in p["rss_mb"]})
    growth = {}
    for name in services:
        warm = [p["rss_mb"][name] for p in quarter(points, 1) if name in p["rss_mb"]]
        last = [p["rss_mb"][name] for p in quarter(points, 3) if name in p["rss_mb"]]
        if warm and last:
            growth[name] = round(100 * (max(last) / max(warm) - 1), 1)

    def peak(q: int, key: str) -> int:
        return max((sum(p[key].values()) for p in quarter(points, q)), default=0)

    def length_peak(q: int) -> int:
        # The dead-letter stream grows only with poison; the rest is what producers and MAXLEN bound.
        return max((sum(p["stream_len"].values()) for p in quarter(points, q)), default=0)

    pending_bounded = peak(3, "pending") <= max(peak(1, "pending"), 64)
    fds = {}
    for name in services:
        warm = [p["fds"][name] for p in quarter(points, 1) if name in p["fds"]]
        last = [p["fds"][name] for p in quarter(points, 3) if name in p["fds"]]
        if warm and last:
            fds[name] = {"second_quarter_peak": max(warm), "last_quarter_peak": max(last)}
    lengths = {"second_quarter_peak": length_peak(1), "last_quarter_peak": length_peak(3)}
    # Streams keep history up to MAXLEN: they grow with every job until trimmed; bounded means under MAXLEN.
    limit = sum(ls.maxlen_for(s) for s in ls.ALL_STREAMS)
    return {
        "rss_growth_percent_after_warmup": growth,
        "rss_growth_ok": all(g < 10 for g in growth.values()),
        "pending_peak_second_quarter": peak(1, "pending"),
        "pending_peak_last_quarter": peak(3, "pending"),
        "pending_bounded": pending_bounded,
        "open_fds": fds,
        # A handful more descriptors late in the soak is noise; growing with every job is a leak.
        "fds_bounded": all(v["last_quarter_peak"] <= v["second_quarter_peak"] + 4 for v in fds.values()),
        "stream_entries": lengths,
        "streams_bounded": lengths["last_quarter_peak"] <= limit,
        "errors": len(errors) + runs_failed,
        "error_samples": errors[:10],
    }


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t_s"] / 60 for p in points]
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("stream_len", "stream length"), ("pending", "pending"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        names = sorted({n for p in points for n in p[key]})
        for name in names:
            values = [p[key].get(name) for p in points]
            if any(values):
                ax.plot(t, values, label=name.removeprefix("esper."))
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("minutes")
    fig.suptitle("esper soak")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("soak-out"), help="where the PNG and JSON go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    redis_clients: dict[str, Any] = {}
    runs_done, runs_failed, errors = 0, 0, []
    with tempfile.TemporaryDirectory(prefix="esper-soak-") as tmp:
        root = Path(tmp)
        server = RedisServer(root / "redis").start()
        ports = {name: free_port() for name in ("tamiyo", "tolaria", "nissa")}
        stack = Stack(
            default_specs(ports),
            redis_url=server.url,
            runs_dir=root / "runs",
            logs_dir=root / "logs",
            api_token=TOKEN,
            restart=RestartPolicy(max_restarts=5),
        ).start()
        client = redis.Redis.from_url(server.url)
        api = httpx.Client(base_url=stack["tamiyo"].url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        try:
            stack.wait_ready(timeout_s=180)
            started = time.monotonic()
            end = started + 60 * args.minutes
            next_sample = started
            current: str | None = None
            while time.monotonic() < end:
                if current is None:
                    current = api.post("/runs", json={**JOB, "run_id": f"soak-{runs_done:04d}"}).json()["run_id"]
                status = api.get(f"/runs/{current}").json()
                if status["finished"] or status["stopped"]:
                    runs_done += 1
                    if status["error"]:
                        runs_failed += 1
                        errors.append(f"{current}: {status['error']}")
                    current = None
                if time.monotonic() >= next_sample:
                    points.append(sample(stack, client, started))
                    next_sample += args.sample_s
                time.sleep(0.2)
            points.append(sample(stack, client, started))
            clients = Counter(c["cmd"] for c in client.client_list())
            tcp = {n: len(psutil.Process(s.pid or 0).net_connections("tcp")) for n, s in stack.services.items()}
            redis_clients = {"by_last_command": dict(clients.most_common(8)), "tcp_connections_by_service": tcp}
        finally:
            api.close()
            stack.stop()
            client.close()
            server.stop()
        restarts = {n: s.restarts for n, s in stack.services.items()}
        for name, service in stack.services.items():
            errors += [f"{name}: restarted {restarts[name]} time(s)"] if restarts[name] else []
            for line in service.log_path.read_text(errors="replace").splitlines():
                if " ERROR " in line or line.startswith("Traceback"):
                    errors.append(f"{name}: {line[:200]}")
    result = {
        "minutes": args.minutes,
        "runs_finished": runs_done,
        "runs_failed": runs_failed,
        **verdict(points, errors, runs_failed),
        "redis_clients_at_end": redis_clients,
        "samples": len(points),
        "png": str(args.out / "soak.png"),
    }
    plot(points, args.out / "soak.png")
    (args.out / "soak.json").write_text(json.dumps({**result, "points": points}, indent=1))
    print(f"{runs_done} jobs in {args.minutes:g} min, {runs_failed} failed, {result['errors']} error(s)")
    print(f"RSS growth after warm-up (%): {result['rss_growth_percent_after_warmup']} (target < 10)")
    print(f"pending peak: {result['pending_peak_second_quarter']} -> {result['pending_peak_last_quarter']}")
    print(f"open fds (second quarter peak -> last quarter peak): {result['open_fds']}")
    print(f"Redis clients at the end: {redis_clients}")
    print(f"stream entries peak: {result['stream_entries']}; plot {result['png']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
