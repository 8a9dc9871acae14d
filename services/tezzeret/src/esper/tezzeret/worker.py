"""Tezzeret on the bus: compile requests in (consumer group ``tezzeret``), Urza updated, results out.

For each :class:`CompileRequest`:

1. register the kernel in Urza (the same kernel for the same request, however
   often it comes, from whichever Tamiyo or operator);
2. if Urza already holds it validated, publish that (no second artifact);
3. else mark it compiling, compile and validate it off the event loop,
   upload the artifact and mark it validated: from here Kasmina can load it;
   publish OK;
4. time it later (most of a compile's time): in short slices while no
   request is being answered, so a graph's kernels all become usable first;
   the measurements are then added to the kernel in Urza (the same artifact
   reported again). A Tezzeret stopped before that leaves a validated kernel
   without latencies.

Weights are seeded from the kernel id and export is deterministic, so two
Tezzerets racing on one kernel upload the same bytes: one blob, and the
second report of the same sha256 is accepted as a repeat.

A blueprint that cannot be built, compiled or validated gives a FAILED result
with the error (and the kernel is marked failed in Urza); Tezzeret goes on
with the next request. Urza being down is different: the handler raises, the
message stays pending and comes back (at-least-once), so no request is lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from esper.leyline import Envelope, Message
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest, CompileResult, CompileStatus, KernelMetadata
from esper.oona import Bus, Delivery
from esper.tezzeret.compiler import Round, ValidatedKernel, build_kernel, measured, time_rounds
from esper.tezzeret.urza import UrzaClient, UrzaRejected, UrzaUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
#: How long a request waits for an unavailable Urza before its delivery fails (and is retried by the bus).
URZA_WAIT_S = 120.0
#: Timing rounds per slice of background measurement (a request waits at most one slice for the compile thread).
TIMING_SLICE = 2


@dataclass(slots=True)
class _Timing:
    """A validated kernel waiting for its timings, and the report they complete."""

    kernel_id: str
    kernel: ValidatedKernel
    report: dict[str, Any]
    rounds: list[Round] = field(default_factory=list)


class TezzeretMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.results = Counter(
            "esper_tezzeret_compile_results",
            "Compile requests answered, by outcome",
            ["status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "esper_tezzeret_compile_seconds",
            "Time from a compile request to its validated kernel in Urza (timing follows in the background)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )


def metadata_from(kernel: dict[str, Any]) -> KernelMetadata:
    """Leyline's KernelMetadata from Urza's kernel record."""
    return KernelMetadata(
        kernel_id=kernel["kernel_id"],
        blueprint_id=kernel["blueprint_id"],
        blueprint_version=kernel["blueprint_version"],
        input_shape=list(kernel["input_shape"]),
        layout=kernel.get("layout"),
        config=dict(kernel["config"]),
        dtype=kernel["dtype"],
        device=kernel["target"],
        sha256=kernel["sha256"],
        size_bytes=kernel["size_bytes"],
        params=kernel.get("params") or 0,
        artifact_format=kernel.get("artifact_format") or "",
        latency_us=kernel.get("latency_us"),
        backward_latency_us=kernel.get("backward_latency_us"),
        memory_bytes=kernel.get("memory_bytes"),
        max_abs_error=kernel.get("max_abs_error"),
        max_grad_error=kernel.get("max_grad_error"),
    )


class Tezzeret:
    """Compiles what arrives on ``esper.compile.requests``; ``handle`` is the bus handler."""

    def __init__(
        self,
        bus: Bus,
        urza: UrzaClient,
        metrics: TezzeretMetrics | None = None,
        *,
        repeats: int = 20,
        urza_wait_s: float = URZA_WAIT_S,
    ) -> None:
        self.bus = bus
        self.urza = urza
        self.metrics = metrics or TezzeretMetrics()
        self.repeats = repeats
        self.urza_wait_s = urza_wait_s
        #: the compile thread (its own pool: a shutdown need not wait for a compile in flight)
        self.compiler = ThreadPoolExecutor(1, thread_name_prefix="tezzeret-compile")
        self._answering = 0  # requests being answered now: timing waits for them
        self._timings: deque[_Timing] = deque()
        self._timer: asyncio.Task[None] | None = None

    async def _urza(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` off the event loop, waiting out an unavailable Urza for up to ``urza_wait_s``.

        (Raising at once would spend the message's few deliveries in a second and
        send it to the dead-letter stream while Urza restarts.)
        """
        deadline = time.monotonic() + self.urza_wait_s
        delay = 0.25
        while True:
            try:
                return await asyncio.to_thread(call, *args)
            except UrzaUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    async def handle(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        """Bus handler: answer one request (raises only when Urza is unavailable, so it is redelivered)."""
        request = envelope.payload
        if not isinstance(request, CompileRequest):
            return  # another message type on the stream: not ours to answer
        self._answering += 1
        try:
            result = await self.answer(request)
        finally:
            self._answering -= 1
        self.metrics.results.labels(result.status.value).inc()
        await self.bus.publish(
            ls.COMPILE_RESULTS, Envelope(payload=result, run_id=envelope.run_id, trace_id=envelope.trace_id)
        )

    async def answer(self, request: CompileRequest) -> CompileResult:
        """The result for ``request``: the kernel (compiled now or before), or why there is none."""
        body = {
            "blueprint_id": request.blueprint_id,
            "blueprint_version": request.blueprint_version,
            "config": dict(request.config),
            "input_shape": list(request.input_shape),
            "layout": request.layout,
            "dtype": request.dtype,
            "target": request.device,
        }
        try:
            kernel = await self._urza(self.urza.register, body)
        except UrzaRejected as exc:  # the request itself is bad: say so, do not retry
            return CompileResult(request_id=request.request_id, status=CompileStatus.FAILED, error=exc.reason)
        kernel_id = kernel["kernel_id"]
        if kernel["status"] == "validated":
            log.info("kernel %s already validated: no recompile", kernel_id)
            return self._ok(request, kernel)
        try:
            await self._urza(self.urza.report, kernel_id, {"status": "compiling"})
        except UrzaRejected as exc:
            if exc.status != 409:
                raise
            return self._ok(request, await self._urza(self.urza.kernel, kernel_id))  # validated meanwhile
        started = time.perf_counter()
        try:
            job = functools.partial(
                build_kernel,
                request.blueprint_id,
                tuple(kernel["input_shape"]),
                dict(kernel["config"]),
                kernel["layout"],
                dtype=kernel["dtype"],
                device=kernel["target"],
                seed=int(kernel_id[1:9], 16),
            )
            built = await asyncio.get_running_loop().run_in_executor(self.compiler, job)
        except Exception as exc:  # a blueprint's failure is a result, never a crash
            self.metrics.seconds.observe(time.perf_counter() - started)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("kernel %s failed: %s", kernel_id, error)
            await self._urza(self.urza.report, kernel_id, {"status": "failed", "error": error[:16_000]})
            return CompileResult(
                request_id=request.request_id, status=CompileStatus.FAILED, error=error, kernel_id=kernel_id
            )
        sha = await self._urza(self.urza.upload, built.artifact)
        report: dict[str, Any] = {
            "status": "validated",
            "sha256": sha,
            "artifact_format": built.artifact_format,
            "params": built.params,
            "max_abs_error": built.max_abs_error,
            "max_grad_error": built.max_grad_error,
        }
        try:
            kernel = await self._urza(self.urza.report, kernel_id, report)
        except UrzaRejected as exc:
            if exc.status != 409:
                raise
            # Another Tezzeret validated it first: its artifact is the kernel.
            self.metrics.seconds.observe(time.perf_counter() - started)
            return self._ok(request, await self._urza(self.urza.kernel, kernel_id))
        self.metrics.seconds.observe(time.perf_counter() - started)
        # Loadable now; timing takes most of a compile's time, so it waits until no request does.
        self._timings.append(_Timing(kernel_id, built, report))
        if self._timer is None or self._timer.done():
            self._timer = asyncio.ensure_future(self._time_when_idle())
        return self._ok(request, kernel)

    async def _time_when_idle(self) -> None:
        """Measure the validated kernels, a slice at a time while no request is being answered."""
        loop = asyncio.get_running_loop()
        while self._timings:
            if self._answering:
                await asyncio.sleep(0.05)
                continue
            job = self._timings[0]
            try:
                rounds = min(TIMING_SLICE, self.repeats - len(job.rounds))
                warmup = 3 if not job.rounds else 1  # caches may have gone cold since the last slice
                job.rounds += await loop.run_in_executor(self.compiler, time_rounds, job.kernel, rounds, warmup)
                if len(job.rounds) < self.repeats:
                    continue
                self._timings.popleft()
                done = await loop.run_in_executor(self.compiler, measured, job.kernel, job.rounds)
                report = {
                    **job.report,
                    "latency_us": done.forward_us,
                    "backward_latency_us": done.backward_us,
                    "memory_bytes": done.memory_bytes,
                }
                await self._urza(self.urza.report, job.kernel_id, report)
            except Exception as exc:  # the kernel is valid; it only goes without its timings
                if self._timings and self._timings[0] is job:
                    self._timings.popleft()
                log.warning("kernel %s validated but not timed: %s: %s", job.kernel_id, type(exc).__name__, exc)

    def stop_timing(self) -> None:
        """Drop the timings not yet done (a stopping Tezzeret; their kernels stay validated without them)."""
        self._timings.clear()
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def _ok(request: CompileRequest, kernel: dict[str, Any]) -> CompileResult:
        return CompileResult(
            request_id=request.request_id,
            status=CompileStatus.OK,
            kernel=metadata_from(kernel),
            kernel_id=kernel["kernel_id"],
        )
