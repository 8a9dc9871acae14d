"""Compile one blueprint for one shape: build, compile to an artifact, check it against eager, measure it.

The artifact is loaded back the way Kasmina will load it
(:func:`esper.kasmina.kernels.load_artifact`) and must match the eager module
it was compiled from, on fresh random inputs at two batch sizes (the batch
dimension is dynamic): outputs, and gradients with respect to the input and
every parameter, within tolerance. Then both are timed forward and backward
(medians of alternating runs) and the memory one training step keeps is counted.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.kernels import compile_seed, fresh_copy, load_artifact

#: Requests past these are refused before anything is allocated (a bad request must not take Tezzeret down).
MAX_INPUT_ELEMENTS = 1 << 24
MAX_PARAMS = 1 << 26

#: Largest allowed difference from eager (outputs and gradients), absolute plus relative to the magnitude.
ATOL = 1e-5
RTOL = 1e-4


class ValidationFailed(ValueError):
    """The compiled artifact does not compute what the eager module computes."""


@dataclass(frozen=True, slots=True)
class ValidatedKernel:
    """An artifact proved against eager, before timing: enough for Urza to serve it (see :func:`measure_kernel`)."""

    artifact: bytes
    artifact_format: str
    layout: str
    config: dict[str, int | float | str | bool]
    params: int
    max_abs_error: float
    max_grad_error: float
    batch: int
    eager: nn.Module
    compiled: nn.Module
    example: torch.Tensor


@dataclass(frozen=True, slots=True)
class CompiledKernel:
    """A validated artifact and what was measured about it (latencies of one ``batch``-sample batch)."""

    artifact: bytes
    artifact_format: str
    layout: str
    config: dict[str, int | float | str | bool]
    params: int
    memory_bytes: int
    forward_us: float
    backward_us: float
    eager_forward_us: float
    eager_backward_us: float
    max_abs_error: float
    max_grad_error: float
    batch: int


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = _max_diff(got, want)
    allowed = ATOL + RTOL * float(want.abs().max()) if want.numel() else ATOL
    if not diff <= allowed:
        raise ValidationFailed(f"{name} differs from eager by {diff:.3g} (allowed {allowed:.3g})")
    return diff


def _step(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    weight = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    (out * weight).sum().backward()  # a loss whose gradient differs per element
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    assert x.grad is not None
    return out.detach(), x.grad.detach(), grads


def validate(
    eager: nn.Module, compiled: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...] = (8, 3)
) -> tuple[float, float]:
    """(max output error, max gradient error) over random inputs; ValidationFailed past tolerance."""
    eager_names = [n for n, _ in eager.named_parameters()]
    compiled_names = [n for n, _ in compiled.named_parameters()]
    if eager_names != compiled_names:
        raise ValidationFailed(f"parameters differ: eager {eager_names}, compiled {compiled_names}")
    out_err = grad_err = 0.0
    for n in batches:
        x = torch.randn((n, *shape))
        e_out, e_gx, e_grads = _step(eager, x)
        c_out, c_gx, c_grads = _step(compiled, x)
        if c_out.shape != e_out.shape:
            raise ValidationFailed(f"output shape {list(c_out.shape)} != eager {list(e_out.shape)} at batch {n}")
        out_err = max(out_err, _check(f"output (batch {n})", c_out, e_out))
        grad_err = max(grad_err, _check(f"input gradient (batch {n})", c_gx, e_gx))
        for name, cg, eg in zip(eager_names, c_grads, e_grads, strict=True):
            grad_err = max(grad_err, _check(f"gradient of {name} (batch {n})", cg, eg))
    return out_err, grad_err


def time_step(module: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """One forward and one backward, seconds each."""
    x = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    out = module(x)
    t1 = time.perf_counter()
    out.sum().backward()
    t2 = time.perf_counter()
    for p in module.parameters():
        p.grad = None
    return t1 - t0, t2 - t1


def measure(eager: nn.Module, compiled: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float, float, float]:
    """Median forward/backward seconds of the compiled module, then of eager, alternating runs (warm-up first)."""
    for _ in range(3):
        time_step(eager, x)
        time_step(compiled, x)
    rounds = [(time_step(compiled, x), time_step(eager, x)) for _ in range(repeats)]
    med = statistics.median
    return (
        med(c[0] for c, _ in rounds),
        med(c[1] for c, _ in rounds),
        med(e[0] for _, e in rounds),
        med(e[1] for _, e in rounds),
    )


def step_memory_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of parameters, buffers and gradients, plus the activations one forward saves for backward."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x.detach().requires_grad_(True))
    state = sum(p.numel() * p.element_size() for p in module.parameters()) * 2  # weights and their gradients
    state += sum(b.numel() * b.element_size() for b in module.buffers())
    return int(state + saved + out.numel() * out.element_size())


def build_kernel(
    blueprint: str,
    input_shape: tuple[int, ...],
    config: dict[str, int | float | str | bool] | None = None,
    layout: str | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    batch: int = 32,
    seed: int = 0,
) -> ValidatedKernel:
    """Build ``blueprint`` for per-sample ``input_shape``, compile it and validate the artifact against eager.

    Raises ValueError for a request that does not fit (unknown blueprint, bad
    config or shape, a dtype or device this compiler does not serve),
    ValidationFailed when the artifact disagrees with eager, and whatever the
    blueprint's own code raises when it cannot be built or compiled.
    """
    if dtype != "float32":
        raise ValueError(f"dtype {dtype!r}: this compiler builds float32 kernels")
    if device != "cpu":  # CUDA kernels need building, validating and timing on the GPU: not done yet
        raise ValueError(f"device {device!r}: this compiler builds CPU kernels only")
    spec = get_blueprint(blueprint)
    resolved = spec.resolve(tuple(input_shape), config, layer_kind=layout)
    elements = batch * math.prod(resolved.shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise ValueError(
            f"input_shape {list(resolved.shape)}: a batch of {batch} is {elements} elements (max {MAX_INPUT_ELEMENTS})"
        )
    params = spec.param_count(resolved.shape, resolved.config, layer_kind=resolved.kind)
    if params > MAX_PARAMS:
        raise ValueError(f"config {resolved.config}: {params} parameters at {list(resolved.shape)} (max {MAX_PARAMS})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        eager = spec.build(resolved.shape, resolved.config, layer_kind=resolved.kind)
        example = torch.randn((batch, *resolved.shape))
        artifact, fmt = compile_seed(eager, example)
        compiled = fresh_copy(load_artifact(artifact))
        eager.train()
        out_err, grad_err = validate(eager, compiled, resolved.shape)
    return ValidatedKernel(
        artifact=artifact,
        artifact_format=fmt,
        layout=resolved.kind,
        config=dict(resolved.config),
        params=sum(p.numel() for p in compiled.parameters()),
        max_abs_error=out_err,
        max_grad_error=grad_err,
        batch=batch,
        eager=eager,
        compiled=compiled,
        example=example,
    )


#: One round of timing: ((compiled forward, backward), (eager forward, backward)), seconds.
Round = tuple[tuple[float, float], tuple[float, float]]


def time_rounds(kernel: ValidatedKernel, rounds: int, warmup: int = 3) -> list[Round]:
    """``rounds`` alternating timed steps of the compiled and the eager module, after ``warmup`` untimed ones.

    Tezzeret times in short slices of these between compile requests (a
    request never waits behind a whole measurement); :func:`measured` turns
    the collected rounds into the kernel's measurements.
    """
    for _ in range(warmup):
        time_step(kernel.eager, kernel.example)
        time_step(kernel.compiled, kernel.example)
    x = kernel.example
    return [(time_step(kernel.compiled, x), time_step(kernel.eager, x)) for _ in range(rounds)]


def measure_kernel(kernel: ValidatedKernel, repeats: int = 20) -> CompiledKernel:
    """Time ``kernel`` against its eager module (forward and backward, ``repeats`` alternating runs) and count
    the memory one training step holds. Most of a compile's time is spent here, so Tezzeret publishes the
    validated kernel first and adds these measurements after."""
    return measured(kernel, time_rounds(kernel, repeats))


def measured(kernel: ValidatedKernel, rounds: list[Round]) -> CompiledKernel:
    """The kernel's measurements: medians of ``rounds`` (see :func:`time_rounds`), and its step memory."""
    med = statistics.median
    fwd, bwd = med(c[0] for c, _ in rounds), med(c[1] for c, _ in rounds)
    e_fwd, e_bwd = med(e[0] for _, e in rounds), med(e[1] for _, e in rounds)
    memory = step_memory_bytes(kernel.compiled, kernel.example)
    return CompiledKernel(
        artifact=kernel.artifact,
        artifact_format=kernel.artifact_format,
        layout=kernel.layout,
        config=kernel.config,
        params=kernel.params,
        memory_bytes=memory,
        forward_us=fwd * 1e6,
        backward_us=bwd * 1e6,
        eager_forward_us=e_fwd * 1e6,
        eager_backward_us=e_bwd * 1e6,
        max_abs_error=kernel.max_abs_error,
        max_grad_error=kernel.max_grad_error,
        batch=kernel.batch,
    )


def compile_kernel(
    blueprint: str,
    input_shape: tuple[int, ...],
    config: dict[str, int | float | str | bool] | None = None,
    layout: str | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    batch: int = 32,
    repeats: int = 20,
    seed: int = 0,
) -> CompiledKernel:
    """Build ``blueprint`` for per-sample ``input_shape``, compile, validate and measure it
    (:func:`build_kernel`, then :func:`measure_kernel`); raises what :func:`build_kernel` raises."""
    built = build_kernel(blueprint, input_shape, config, layout, dtype=dtype, device=device, batch=batch, seed=seed)
    return measure_kernel(built, repeats)


def warm_up() -> float:
    """Compile and validate a tiny seed, discarding it; returns the seconds it took.

    A process's first ``torch.export`` traces its own machinery too (seconds,
    against a fraction of one afterwards); the service does this as it starts,
    so the first kernel a run asks for is not the slow one.
    """
    started = time.perf_counter()
    build_kernel("norm", (4,), layout="linear")
    return time.perf_counter() - started
