"""Compilation ahead of need: when a run's ModelGraph arrives, ask Tezzeret for the kernels its slots could use.

Every (slot shape, layout, blueprint option) in the graph is a kernel a later
germination may want. :class:`KernelPrefetch` publishes a
:class:`CompileRequest` on ``esper.compile.requests`` for each one Urza does not
already hold (validated, being compiled, or failed before), once per process,
so the kernel is ready (or known not to build) by the time Tamiyo decides to
germinate. Asking Urza registers the kernel there (status ``requested``), so
the store lists what is wanted. Without Urza (not configured, or not answering)
every option is requested: Tezzeret itself finds a kernel it already compiled
and does not build it twice.

A kernel that is not settled yet (requested, or compiling) is watched: every
``recheck_s`` its status is asked again, until it is validated or failed. One
that has been ``compiling`` for ``stuck_after_s`` (by Urza's clock: its
``updated_at`` against the answer's ``Date``) lost its Tezzeret, which died
mid-compile; it is requested again (at most once per ``stuck_after_s``), and a
live Tezzeret compiles it.

Torch-free: only Leyline, Oona and the standard library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from esper.leyline import Envelope, ModelGraph
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest, kernel_id_for
from esper.oona import Bus

log = logging.getLogger(__name__)

#: Urza statuses after which a request would never add anything.
SETTLED = frozenset({"validated", "failed"})
#: A kernel compiling this long (seconds, by Urza's clock) is taken for lost with its Tezzeret.
STUCK_AFTER_S = 600.0
#: How often watched (not yet settled) kernels are asked about again, seconds.
RECHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class KernelState:
    """A kernel's status in Urza, and for how long it has had it (seconds; None when Urza did not say)."""

    status: str
    age_s: float | None = None


class KernelStatus(Protocol):
    def status(self, request: CompileRequest) -> KernelState | None:
        """Urza's state of the kernel ``request`` names (registering it), or None when Urza cannot say."""


class UrzaKernelStatus:
    """:class:`KernelStatus` over Urza's HTTP API (``POST /kernels`` registers and answers with the status)."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def status(self, request: CompileRequest) -> KernelState | None:
        body = {
            "blueprint_id": request.blueprint_id,
            "blueprint_version": request.blueprint_version,
            "config": dict(request.config),
            "input_shape": list(request.input_shape),
            "layout": request.layout,
            "dtype": request.dtype,
            "target": request.device,
        }
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        call = urllib.request.Request(
            f"{self.base_url}/kernels", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(call, timeout=self.timeout_s) as response:
                kernel = json.loads(response.read())
                return KernelState(str(kernel["status"]), _age(kernel.get("updated_at"), response.headers.get("Date")))
        except urllib.error.HTTPError as exc:
            log.warning("urza refused kernel %s at %s: %s", request.blueprint_id, request.input_shape, exc.code)
            # a request Urza calls invalid would fail in Tezzeret too
            return KernelState("failed") if 400 <= exc.code < 500 else None
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("urza unavailable at %s: %s", self.base_url, exc)
            return None


def _age(updated_at: str | None, date: str | None) -> float | None:
    """Seconds from ``updated_at`` (ISO, UTC when naive) to the answer's ``Date`` (this clock without one)."""
    if not updated_at:
        return None
    since = datetime.fromisoformat(updated_at)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    try:
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    except (TypeError, ValueError):
        now = datetime.now(UTC)
    return max(0.0, (now - since).total_seconds())


def compile_requests(graph: ModelGraph, *, dtype: str = "float32", device: str = "cpu") -> list[CompileRequest]:
    """One request per distinct (shape, layout, blueprint, config) among the graph's slot options.

    Ordered by option rank, then slot: every slot's first option, then every
    slot's second, ... A policy tends to prefer the same blueprint wherever it
    grows, and Tezzeret compiles in request order, so the kernels germination
    most likely wants are ready first.
    """
    requests: dict[str, CompileRequest] = {}
    ranked = [(rank, slot, option) for slot in graph.slots if slot.shape for rank, option in enumerate(slot.options)]
    for _, slot, option in sorted(ranked, key=lambda item: item[0]):  # stable: slots keep graph order per rank
        key = kernel_id_for(option.blueprint, slot.shape, option.config, layout=slot.layout, dtype=dtype, device=device)
        if key not in requests:
            requests[key] = CompileRequest(
                request_id=f"prefetch-{key}",
                blueprint_id=option.blueprint,
                input_shape=list(slot.shape),
                config=dict(option.config),
                layout=slot.layout,
                dtype=dtype,
                device=device,
            )
    return list(requests.values())


@dataclass(slots=True)
class _Watched:
    request: CompileRequest
    run_id: str
    published_at: float | None  # time.monotonic() of this process's last request for it


class KernelPrefetch:
    """Publishes compile requests for a graph's slot options; ``store`` (Urza) filters those already there.

    Kernels not settled when asked about are watched (see the module docstring):
    one compiling for ``stuck_after_s`` is requested again.
    """

    def __init__(
        self,
        bus: Bus,
        store: KernelStatus | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        stuck_after_s: float = STUCK_AFTER_S,
        recheck_s: float = RECHECK_S,
    ) -> None:
        if not stuck_after_s > 0 or not recheck_s > 0:
            raise ValueError(f"stuck_after_s={stuck_after_s!r}, recheck_s={recheck_s!r}: both must be > 0")
        self.bus = bus
        self.store = store
        self.dtype = dtype
        self.device = device
        self.stuck_after_s = stuck_after_s
        self.recheck_s = recheck_s
        self._asked: set[str] = set()  # request ids handled: settled, published without a store, or watched
        self._watched: dict[str, _Watched] = {}
        self._tasks: set[asyncio.Task[list[CompileRequest]]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def on_graph(self, graph: ModelGraph, run_id: str) -> list[CompileRequest]:
        """Request the kernels ``graph`` could use and nobody asked for yet; returns what was published."""
        published = []
        store_up = self.store is not None
        for request in compile_requests(graph, dtype=self.dtype, device=self.device):
            if request.request_id in self._asked:
                continue
            state = await asyncio.to_thread(self.store.status, request) if store_up and self.store else None
            if state is None:
                store_up = False  # one timeout per graph, not one per option
            self._asked.add(request.request_id)
            if state is not None and state.status in SETTLED:
                continue
            watched = _Watched(request, run_id, None)
            if self.store is not None:
                self._watched[request.request_id] = watched
            if state is None or state.status != "compiling" or self._stuck(state, watched):
                await self._publish(watched)
                published.append(request)
        if published:
            log.info("run %s: requested %d kernel(s) ahead of need", run_id, len(published))
        self._watch()
        return published

    async def sweep(self) -> list[CompileRequest]:
        """Ask Urza about every watched kernel once: forget the settled, request the stuck again; returns those."""
        again = []
        for request_id, watched in list(self._watched.items()):
            state = await asyncio.to_thread(self.store.status, watched.request) if self.store else None
            if state is None:
                break  # Urza cannot say: ask again next sweep
            if state.status in SETTLED:
                del self._watched[request_id]
            elif state.status == "compiling" and self._stuck(state, watched):
                log.warning(
                    "kernel %s (%s at %s) has been compiling for %.0fs: its Tezzeret is gone; requesting it again",
                    request_id,
                    watched.request.blueprint_id,
                    watched.request.input_shape,
                    state.age_s,
                )
                await self._publish(watched)
                again.append(watched.request)
        return again

    def _stuck(self, state: KernelState, watched: _Watched) -> bool:
        """Compiling for ``stuck_after_s``, and not requested by this process within that time either."""
        if state.age_s is None or state.age_s < self.stuck_after_s:
            return False
        return watched.published_at is None or time.monotonic() - watched.published_at >= self.stuck_after_s

    async def _publish(self, watched: _Watched) -> None:
        await self.bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=watched.request, run_id=watched.run_id))
        watched.published_at = time.monotonic()

    def _watch(self) -> None:
        """Keep a background sweep running while kernels are watched."""
        if self._watched and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.ensure_future(self._sweep_until_settled())

    async def _sweep_until_settled(self) -> None:
        while self._watched:
            await asyncio.sleep(self.recheck_s)
            try:
                await self.sweep()
            except Exception:  # a bus or store hiccup: the next sweep tries again
                log.exception("kernel prefetch: sweep failed")

    def schedule(self, graph: ModelGraph, run_id: str) -> asyncio.Task[list[CompileRequest]]:
        """:meth:`on_graph` as a background task, so the decision loop never waits on Urza."""
        task = asyncio.ensure_future(self.on_graph(graph, run_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[list[CompileRequest]]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kernel prefetch failed", exc_info=task.exception())
