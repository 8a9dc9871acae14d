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

Torch-free: only Leyline, Oona and the standard library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from typing import Protocol

from esper.leyline import Envelope, ModelGraph
from esper.leyline import streams as ls
from esper.leyline.compile import CompileRequest, kernel_id_for
from esper.oona import Bus

log = logging.getLogger(__name__)

#: Urza statuses after which a request would add nothing.
SETTLED = frozenset({"validated", "compiling", "failed"})


class KernelStatus(Protocol):
    def status(self, request: CompileRequest) -> str | None:
        """Urza's status of the kernel ``request`` names (registering it), or None when Urza cannot say."""


class UrzaKernelStatus:
    """:class:`KernelStatus` over Urza's HTTP API (``POST /kernels`` registers and answers with the status)."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def status(self, request: CompileRequest) -> str | None:
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
                return str(json.loads(response.read())["status"])
        except urllib.error.HTTPError as exc:
            log.warning("urza refused kernel %s at %s: %s", request.blueprint_id, request.input_shape, exc.code)
            return (
                "failed" if 400 <= exc.code < 500 else None
            )  # a request Urza calls invalid would fail in Tezzeret too
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            log.warning("urza unavailable at %s: %s", self.base_url, exc)
            return None


def compile_requests(graph: ModelGraph, *, dtype: str = "float32", device: str = "cpu") -> list[CompileRequest]:
    """One request per distinct (shape, layout, blueprint, config) among the graph's slot options, in graph order."""
    requests: dict[str, CompileRequest] = {}
    for slot in graph.slots:
        if not slot.shape:
            continue
        for option in slot.options:
            key = kernel_id_for(
                option.blueprint, slot.shape, option.config, layout=slot.layout, dtype=dtype, device=device
            )
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


class KernelPrefetch:
    """Publishes compile requests for a graph's slot options; ``store`` (Urza) filters those already there."""

    def __init__(
        self, bus: Bus, store: KernelStatus | None = None, *, dtype: str = "float32", device: str = "cpu"
    ) -> None:
        self.bus = bus
        self.store = store
        self.dtype = dtype
        self.device = device
        self._asked: set[str] = set()
        self._tasks: set[asyncio.Task[list[CompileRequest]]] = set()

    async def on_graph(self, graph: ModelGraph, run_id: str) -> list[CompileRequest]:
        """Request the kernels ``graph`` could use and nobody asked for yet; returns what was published."""
        published = []
        store_up = self.store is not None
        for request in compile_requests(graph, dtype=self.dtype, device=self.device):
            if request.request_id in self._asked:
                continue
            status = await asyncio.to_thread(self.store.status, request) if store_up and self.store else None
            if status is None:
                store_up = False  # one timeout per graph, not one per option
            self._asked.add(request.request_id)
            if status in SETTLED:
                continue
            await self.bus.publish(ls.COMPILE_REQUESTS, Envelope(payload=request, run_id=run_id))
            published.append(request)
        if published:
            log.info("run %s: requested %d kernel(s) ahead of need", run_id, len(published))
        return published

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
