"""Training-step cost of three dormant seed slots on ConvHost1D, against the bare host.

A realistic step (forward, cross-entropy, backward, Adam) on a batch of 100
MNIST-1D-shaped inputs (N, 40). The bare host and the wrapped host (same
weights, three DORMANT slots at ``ConvHost1D.DEFAULT_SLOTS``) alternate, with
the order flipped every repeat because this machine is shared and noisy; the
ratio is of the medians. The last line is JSON:
``{"bare_us_median": ..., "dormant_us_median": ..., "ratio": ..., ...}``.
Target: ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from esper.kasmina import ConvHost1D, wrap


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[], None], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        step()
        samples.append(clock() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="A/B rounds")
    parser.add_argument("--steps", type=int, default=10, help="steps of each model per round")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = least noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x, y = torch.randn(100, 40), torch.randint(0, 10, (100,))
    bare = ConvHost1D(channels=args.channels)
    wrapped = wrap(copy.deepcopy(bare), ConvHost1D.DEFAULT_SLOTS)
    wrapped.probe(x)
    hooks = sum(len(m._forward_hooks) for m in wrapped.modules())
    assert hooks == 0, f"dormant slots should register no hooks, found {hooks}"
    with torch.no_grad():
        assert torch.equal(wrapped(x), bare(x)), "dormant slots changed the output"

    steps = {"bare": make_step(bare, x, y), "dormant": make_step(wrapped, x, y)}
    for step in steps.values():  # warm up allocator and kernels
        time_steps(step, 20)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.repeats):
        order = ["bare", "dormant"] if i % 2 == 0 else ["dormant", "bare"]
        for name in order:
            samples[name].extend(time_steps(steps[name], args.steps))

    bare_us = statistics.median(samples["bare"]) * 1e6
    dormant_us = statistics.median(samples["dormant"]) * 1e6
    result = {
        "bare_us_median": round(bare_us, 2),
        "dormant_us_median": round(dormant_us, 2),
        "ratio": round(dormant_us / bare_us, 4),
        "target": 1.02,
        "slots": len(wrapped.slots),
        "steps_each": len(samples["bare"]),
        "threads": args.threads,
    }
    print(f"bare host step      {bare_us:9.1f} us (median of {len(samples['bare'])})")
    print(f"3 dormant slots     {dormant_us:9.1f} us (median of {len(samples['dormant'])})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
