"""The consumer loop both buses run, over a small set of stream primitives.

The Redis and in-process buses differ only in :class:`StreamBackend` (how to
read, claim, ack and dead-letter entries); everything a handler can observe -
ordering, retries, delivery counts, dead-lettering, shutdown - lives here once,
so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from esper.leyline import CodecError, Envelope, Message, decode
from esper.leyline import streams as ls
from esper.oona.bus import ConsumerOptions, Delivery, Handler
from esper.oona.deadletter import dead_letter_bytes
from esper.oona.metrics import BusMetrics

log = logging.getLogger("esper.oona")

#: Read new entries (never delivered to the group).
NEW = ">"
#: Read this consumer's own pending entries from the start.
OWN_PENDING = "0-0"


class Entry(NamedTuple):
    """One stream entry as delivered. ``data`` is None when the entry was trimmed away while pending."""

    stream: str
    entry_id: str
    data: bytes | None
    deliveries: int


class StreamBackend(Protocol):
    """The primitives a consumer needs from a stream store (Redis or in-process)."""

    #: Exceptions meaning "the store is unreachable right now": the consumer backs off and reconnects.
    unavailable: tuple[type[BaseException], ...]

    def is_missing_group(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the group or stream vanished (a store that lost its data)."""

    async def ensure_group(self, stream: str, group: str) -> None:
        """Create ``group`` on ``stream`` from its first entry (and the stream if missing); keep it if it exists."""

    async def read(
        self, group: str, consumer: str, ids: dict[str, str], count: int, block_ms: int | None
    ) -> list[Entry]:
        """XREADGROUP: ``NEW`` reads undelivered entries, an entry id reads own pending entries after it."""

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int, cursor: str
    ) -> tuple[str, list[Entry]]:
        """XAUTOCLAIM: take pending entries idle at least ``min_idle_ms``; return the next cursor and them."""

    async def settle(self, group: str, acks: dict[str, list[str]], dead: list[bytes]) -> None:
        """Append ``dead`` to the dead-letter stream and ack ``acks``, atomically."""

    async def group_stats(self, stream: str, group: str) -> tuple[int | None, int]:
        """(lag, pending) of ``group`` on ``stream``; lag is None when the store cannot tell."""


#: Outcome of one entry: None = ack, False = leave pending for a retry, bytes = dead-letter record, then ack.
_Outcome = bytes | bool | None
_RETRY = False
#: Failures remembered for the dead-letter record; bounded because another consumer may take the entry.
_MAX_REMEMBERED_ERRORS = 10_000


class Consumer:
    """One named consumer of a group, reading one or more streams.

    ``run()`` creates the groups (from the start of each stream), handles this
    consumer's own pending entries first (left by a previous life of the same
    name), then loops: retry own failed entries after ``retry_delay_ms``, claim
    entries idle longer than ``claim_idle_ms`` from dead consumers, block-read
    new entries. It survives handler errors, bad bytes and lost connections;
    it returns only after ``stop()``.
    """

    def __init__(
        self,
        backend: StreamBackend,
        streams: str | Sequence[str],
        group: str,
        consumer: str,
        handler: Handler,
        options: ConsumerOptions | None,
        metrics: BusMetrics,
    ) -> None:
        names = (streams,) if isinstance(streams, str) else tuple(streams)
        if not names or not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"streams must be one or more non-empty stream names, got {streams!r}")
        for label, value in (("group", group), ("consumer", consumer)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{label} must be a non-empty string, got {value!r}")
        self.streams = names
        self.group = group
        self.name = consumer
        self.options = options or ConsumerOptions()
        self._backend = backend
        self._handler = handler
        self._metrics = metrics
        self._children: dict[str, tuple[object, ...]] = {}
        self._last_error: dict[tuple[str, str], tuple[str, str]] = {}
        self._claim_cursor = dict.fromkeys(names, "0-0")
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._in_blocking_read = False
        self._cancelled_by_stop = False
        self._retry_due: float | None = None
        self._next_claim = 0.0
        self._next_stats = 0.0
        self._unsettled: tuple[dict[str, list[str]], list[bytes]] | None = None

    async def run(self) -> None:
        if self._started:
            raise RuntimeError(f"consumer {self.name!r} of group {self.group!r} is already running")
        self._started = True
        self._task = asyncio.current_task()
        delay = self.options.reconnect_min_s
        ready = False
        try:
            while not self._stop.is_set():
                try:
                    if not ready:
                        await self._start()
                        ready = True
                        delay = self.options.reconnect_min_s
                    await self._step()
                except self._backend.unavailable as exc:
                    log.warning(
                        "oona consumer %s/%s: bus unavailable (%s); retry in %.2fs", self.group, self.name, exc, delay
                    )
                    self._metrics.reconnects.labels(self.group).inc()
                    ready = False
                    await self._sleep(delay)
                    delay = min(delay * 2, self.options.reconnect_max_s)
                except Exception as exc:
                    ready = False
                    if self._backend.is_missing_group(exc):
                        log.warning("oona consumer %s/%s: group vanished (%s); recreating", self.group, self.name, exc)
                        continue
                    # A store error (out of memory, read-only replica, ...) must not end a
                    # service's consumer: log it, back off, start over from the pending list.
                    log.exception("oona consumer %s/%s: store error; retry in %.2fs", self.group, self.name, delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, self.options.reconnect_max_s)
        finally:
            self._done.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._in_blocking_read and self._task is not None and not self._cancelled_by_stop:
            self._cancelled_by_stop = True
            self._task.cancel()
        # A handler may stop its own consumer (a STOP command): then run() exits after this batch.
        if self._started and asyncio.current_task() is not self._task:
            await self._done.wait()

    async def _start(self) -> None:
        for stream in self.streams:
            await self._backend.ensure_group(stream, self.group)
        if self._unsettled is not None:
            await self._backend.settle(self.group, *self._unsettled)
            self._unsettled = None
        await self._drain_own_pending()
        self._next_claim = time.monotonic() + self.options.claim_every_s

    async def _drain_own_pending(self) -> None:
        """Handle every entry this consumer holds but never acked, oldest first, each once."""
        after = dict.fromkeys(self.streams, OWN_PENDING)
        while after and not self._stop.is_set():
            entries = await self._backend.read(self.group, self.name, after, self.options.batch_size, None)
            seen = {e.stream for e in entries}
            for stream in list(after):
                if stream not in seen:
                    del after[stream]
            for entry in entries:
                after[entry.stream] = entry.entry_id
            if entries:
                await self._process(entries)

    async def _step(self) -> None:
        now = time.monotonic()
        if self._retry_due is not None and now >= self._retry_due:
            self._retry_due = None
            await self._drain_own_pending()
            return
        if now >= self._next_claim:
            await self._claim()
            return
        if now >= self._next_stats:
            self._next_stats = now + self.options.stats_interval_ms / 1000.0
            await self._update_stats()
        wake = self._next_claim if self._retry_due is None else min(self._next_claim, self._retry_due)
        block_ms = max(1, min(self.options.block_ms, int((wake - now) * 1000) + 1))
        entries = await self._read_new(block_ms)
        if entries:
            await self._process(entries)

    async def _read_new(self, block_ms: int) -> list[Entry]:
        """Block for new entries, but give up the wait at once when stop() is called.

        stop() cancels this task only while it is suspended inside this read (no
        task per read: this is the hot path). An entry the store delivered just as
        the read was cancelled stays in this consumer's pending list: the next
        start drains it, or another consumer claims it.
        """
        ids = dict.fromkeys(self.streams, NEW)
        self._in_blocking_read = True
        try:
            return await self._backend.read(self.group, self.name, ids, self.options.batch_size, block_ms)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._cancelled_by_stop or task is None:
                raise
            self._cancelled_by_stop = False
            task.uncancel()
            return []
        finally:
            self._in_blocking_read = False

    async def _claim(self) -> None:
        more = False
        for stream in self.streams:
            cursor, entries = await self._backend.autoclaim(
                stream,
                self.group,
                self.name,
                self.options.claim_idle_ms,
                self.options.batch_size,
                self._claim_cursor[stream],
            )
            self._claim_cursor[stream] = cursor
            more = more or cursor not in ("0-0", "0")
            if entries:
                log.info(
                    "oona consumer %s/%s claimed %d idle entries of %s", self.group, self.name, len(entries), stream
                )
                await self._process(entries)
        # Keep claiming while a scan is unfinished, so a dead consumer's backlog moves in one go.
        self._next_claim = time.monotonic() + (0.0 if more else self.options.claim_every_s)

    async def _update_stats(self) -> None:
        for stream in self.streams:
            lag, pending = await self._backend.group_stats(stream, self.group)
            if lag is not None:
                self._metrics.lag.labels(stream, self.group).set(lag)
            self._metrics.pending.labels(stream, self.group).set(pending)

    async def _process(self, entries: list[Entry]) -> None:
        """Handle a batch, then ack it and dead-letter what must go, in one atomic write."""
        if self.options.concurrency == 1 or len(entries) == 1:
            outcomes = [await self._handle(entry) for entry in entries]
        else:
            gate = asyncio.Semaphore(self.options.concurrency)

            async def bounded(entry: Entry) -> _Outcome:
                async with gate:
                    return await self._handle(entry)

            outcomes = list(await asyncio.gather(*(bounded(e) for e in entries)))
        acks: dict[str, list[str]] = {}
        dead: list[bytes] = []
        retry = False
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome is _RETRY:
                retry = True
                continue
            if isinstance(outcome, bytes):
                dead.append(outcome)
            acks.setdefault(entry.stream, []).append(entry.entry_id)
        if acks:
            try:
                await self._backend.settle(self.group, acks, dead)
            except self._backend.unavailable:
                # Handled but not yet acked: settle first after reconnecting, so a
                # reconnect does not turn finished work into redeliveries.
                self._unsettled = (acks, dead)
                raise
            for stream, ids in acks.items():
                self._children_for(stream)[0].inc(len(ids))  # type: ignore[attr-defined]
        if retry:
            self._retry_due = time.monotonic() + self.options.retry_delay_ms / 1000.0

    def _children_for(self, stream: str) -> tuple[object, ...]:
        children = self._children.get(stream)
        if children is None:
            m = self._metrics
            children = self._children[stream] = (
                m.consumed.labels(stream, self.group),
                m.handler_failures.labels(stream, self.group),
                m.redeliveries.labels(stream, self.group),
                m.handler_duration.labels(stream, self.group),
            )
        return children

    async def _handle(self, entry: Entry) -> _Outcome:
        """Run the handler for one entry and say what to do with it (see ``_Outcome``)."""
        if entry.data is None:
            return None  # trimmed away while pending: nothing left to deliver, just ack
        _, failures, redeliveries, duration = self._children_for(entry.stream)
        if entry.deliveries > 1:
            redeliveries.inc()  # type: ignore[attr-defined]
        key = (entry.stream, entry.entry_id)
        if entry.deliveries > self.options.max_deliveries:
            error_type, error = self._last_error.pop(
                key,
                (
                    "MaxDeliveriesExceeded",
                    f"delivered {entry.deliveries} times (max_deliveries={self.options.max_deliveries}); "
                    "earlier attempts ended without an ack (their consumer died or lost the bus)",
                ),
            )
            return self._dead(entry, error_type, error, "max_deliveries", None)
        if not entry.data:
            return self._dead(
                entry, "MissingEnvelope", f"entry has no {ls.ENVELOPE_FIELD!r} field", "undecodable", None
            )
        try:
            envelope: Envelope[Message] = decode(entry.data)
        except CodecError as exc:
            return self._dead(entry, "CodecError", str(exc), "undecodable", None)
        start = time.perf_counter()
        try:
            await self._handler(
                envelope, Delivery(entry.stream, entry.entry_id, self.group, self.name, entry.deliveries)
            )
        except Exception as exc:
            duration.observe(time.perf_counter() - start)  # type: ignore[attr-defined]
            failures.inc()  # type: ignore[attr-defined]
            log.warning(
                "oona handler failed on %s %s (delivery %d of %d): %r",
                entry.stream,
                entry.entry_id,
                entry.deliveries,
                self.options.max_deliveries,
                exc,
            )
            if entry.deliveries >= self.options.max_deliveries:
                self._last_error.pop(key, None)
                return self._dead(entry, type(exc).__name__, str(exc), "max_deliveries", envelope)
            if len(self._last_error) >= _MAX_REMEMBERED_ERRORS:
                self._last_error.clear()
            self._last_error[key] = (type(exc).__name__, str(exc))
            return _RETRY
        duration.observe(time.perf_counter() - start)  # type: ignore[attr-defined]
        if self._last_error:
            self._last_error.pop(key, None)
        return None

    def _dead(
        self, entry: Entry, error_type: str, error: str, reason: str, envelope: Envelope[Message] | None
    ) -> bytes:
        self._metrics.dead_lettered.labels(entry.stream, self.group, reason).inc()
        log.error(
            "oona dead-lettering %s %s after %d deliveries: %s: %s",
            entry.stream,
            entry.entry_id,
            entry.deliveries,
            error_type,
            error,
        )
        return dead_letter_bytes(
            stream=entry.stream,
            entry_id=entry.entry_id,
            group=self.group,
            consumer=self.name,
            deliveries=entry.deliveries,
            error_type=error_type,
            error=error,
            original=entry.data or b"",
            envelope=envelope,
        )

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
