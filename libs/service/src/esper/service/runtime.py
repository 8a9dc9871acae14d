"""Run a service: its HTTP app and its background loops in one asyncio loop, until told to stop.

SIGTERM or SIGINT starts a graceful shutdown: ``on_shutdown`` runs first (stop
consumers: they finish and ack what is in flight), then the HTTP server exits.
A background loop that dies takes the service down with a non-zero exit code,
so a supervisor restarts it instead of it running half-alive.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


async def serve(
    app: FastAPI,
    *,
    host: str,
    port: int,
    loops: Sequence[Awaitable[None]] = (),
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    log_level: str = "warning",
) -> int:
    """Serve ``app`` and run ``loops`` until a signal or a failed loop; returns the exit code."""
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="off", access_log=False)
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # we own the signals
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.ensure_future(coro) for coro in loops]
    server_task = asyncio.ensure_future(server.serve())
    stopper = asyncio.ensure_future(stop.wait())
    exit_code = 0
    done, _ = await asyncio.wait([stopper, server_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is stopper:
            log.info("signal received: shutting down")
        elif task is server_task:
            log.error("HTTP server on %s:%s stopped", host, port)
            exit_code = 1
        elif task.cancelled() or task.exception() is not None:
            log.error("background loop failed", exc_info=None if task.cancelled() else task.exception())
            exit_code = 1
    if on_shutdown is not None:
        try:
            await on_shutdown()
        except Exception:
            log.exception("shutdown hook failed")
            exit_code = 1
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    server.should_exit = True
    await asyncio.gather(server_task, return_exceptions=True)
    stopper.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return exit_code
