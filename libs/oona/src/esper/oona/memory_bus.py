"""The bus inside one process (training and RL without Redis), with Redis Streams semantics.

Messages are encoded to the same msgpack bytes as on Redis and go through the
same :class:`~esper.oona.consumer.Consumer`, so groups, pending entries, acks,
redelivery, reclaiming, dead-lettering and trimming behave as they do on Redis.
Use it from one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esper.leyline import CodecError, Envelope, Message, decode, encode
from esper.leyline import streams as ls
from esper.oona.bus import ConsumerOptions, Handler
from esper.oona.consumer import NEW, Consumer, Entry
from esper.oona.metrics import BusMetrics, default_metrics

_Id = tuple[int, int]
#: ``MAXLEN ~`` lets a stream overshoot by up to this many entries before trimming, as Redis does per node.
_TRIM_SLACK = 100


class NoGroupError(LookupError):
    """The group or stream does not exist (Redis: NOGROUP)."""


def _parse_id(text: str) -> _Id:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format_id(entry_id: _Id) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


@dataclass(slots=True)
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float


@dataclass(slots=True)
class _Group:
    last_delivered: _Id = (0, 0)
    pending: dict[_Id, _Pending] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    ids: list[_Id] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    last_id: _Id = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)

    def append(self, payload: bytes, maxlen: int) -> str:
        ms = int(time.time() * 1000)
        new = (ms, 0) if ms > self.last_id[0] else (self.last_id[0], self.last_id[1] + 1)
        self.last_id = new
        self.ids.append(new)
        self.data.append(payload)
        if len(self.ids) > maxlen + _TRIM_SLACK:
            cut = len(self.ids) - maxlen
            del self.ids[:cut]
            del self.data[:cut]
        return _format_id(new)

    def get(self, entry_id: _Id) -> bytes | None:
        at = bisect.bisect_left(self.ids, entry_id)
        if at < len(self.ids) and self.ids[at] == entry_id:
            return self.data[at]
        return None


class InMemoryBus:
    """:class:`esper.oona.Bus` in one process. ``publish`` never waits: the bus cannot be down."""

    def __init__(self, *, maxlen: Mapping[str, int] | None = None, metrics: BusMetrics | None = None) -> None:
        self._streams: dict[str, _Stream] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._maxlen = dict(maxlen) if maxlen is not None else {}
        self._metrics = metrics or default_metrics()

    def maxlen_for(self, stream: str) -> int:
        return self._maxlen.get(stream) or ls.maxlen_for(stream)

    async def publish(self, stream: str, envelope: Envelope[Any]) -> str:
        return self._append(stream, [encode(envelope)])[0]

    async def publish_many(self, stream: str, envelopes: Sequence[Envelope[Any]]) -> list[str]:
        return self._append(stream, [encode(e) for e in envelopes]) if envelopes else []

    async def publish_raw(self, stream: str, data: bytes) -> str:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        return self._append(stream, [data])[0]

    def subscribe(
        self,
        streams: str | Sequence[str],
        group: str,
        consumer: str,
        handler: Handler,
        options: ConsumerOptions | None = None,
    ) -> Consumer:
        return Consumer(_MemoryBackend(self), streams, group, consumer, handler, options, self._metrics)

    async def ping(self) -> None:
        return None

    async def pending(self, stream: str, group: str, consumer: str, count: int = 100) -> list[Envelope[Message]]:
        s = self._streams.get(stream)
        g = s.groups.get(group) if s is not None else None
        if s is None or g is None:
            return []
        envelopes = []
        for entry_id in sorted(i for i, p in g.pending.items() if p.consumer == consumer)[:count]:
            data = s.get(entry_id)
            try:
                envelopes.append(decode(data or b""))
            except CodecError:
                continue
        return envelopes

    async def aclose(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def entries(self, stream: str) -> list[tuple[str, bytes]]:
        """(entry id, envelope bytes) of every entry still in ``stream``, oldest first (XRANGE - +)."""
        s = self._streams.get(stream)
        return [] if s is None else [(_format_id(i), d) for i, d in zip(s.ids, s.data, strict=True)]

    def _stream(self, name: str) -> _Stream:
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = _Stream()
        return s

    def _append(self, stream: str, payloads: list[bytes], *, count: bool = True) -> list[str]:
        s = self._stream(stream)
        maxlen = self.maxlen_for(stream)
        ids = [s.append(p, maxlen) for p in payloads]
        if count:  # dead letters are counted as dead-lettered, not published, as on Redis
            self._metrics.published.labels(stream).inc(len(ids))
        for waiter in self._waiters.pop(stream, ()):
            if not waiter.done():
                waiter.set_result(None)
        return ids

    async def _wait_for_entries(self, streams: Sequence[str], timeout_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for name in streams:
            self._waiters.setdefault(name, set()).add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            pass
        finally:
            for name in streams:
                self._waiters.get(name, set()).discard(waiter)


class _MemoryBackend:
    """The consumer's stream primitives on :class:`InMemoryBus`'s streams."""

    unavailable: tuple[type[BaseException], ...] = ()

    def __init__(self, bus: InMemoryBus) -> None:
        self._bus = bus

    def is_missing_group(self, exc: BaseException) -> bool:
        return isinstance(exc, NoGroupError)

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        s = self._bus._streams.get(stream)
        g = None if s is None else s.groups.get(group)
        if s is None or g is None:
            raise NoGroupError(f"no stream {stream!r} or consumer group {group!r}")
        return s, g

    async def ensure_group(self, stream: str, group: str) -> None:
        self._bus._stream(stream).groups.setdefault(group, _Group())

    async def read(
        self, group: str, consumer: str, ids: dict[str, str], count: int, block_ms: int | None
    ) -> list[Entry]:
        entries = self._read_now(group, consumer, ids, count)
        if entries or not block_ms or any(i != NEW for i in ids.values()):
            return entries
        await self._bus._wait_for_entries(list(ids), block_ms / 1000.0)
        return self._read_now(group, consumer, ids, count)

    def _read_now(self, group: str, consumer: str, ids: dict[str, str], count: int) -> list[Entry]:
        now = time.monotonic()
        entries: list[Entry] = []
        for name, after in ids.items():
            s, g = self._group(name, group)
            if after == NEW:
                start = bisect.bisect_right(s.ids, g.last_delivered)
                for at in range(start, min(start + count, len(s.ids))):
                    entry_id = s.ids[at]
                    g.pending[entry_id] = _Pending(consumer, 1, now)
                    g.last_delivered = entry_id
                    entries.append(Entry(name, _format_id(entry_id), s.data[at], 1))
                continue
            floor = _parse_id(after)
            own = sorted(i for i, p in g.pending.items() if p.consumer == consumer and i > floor)[:count]
            for entry_id in own:
                p = g.pending[entry_id]
                p.deliveries += 1
                p.delivered_at = now
                entries.append(Entry(name, _format_id(entry_id), s.get(entry_id), p.deliveries))
        return entries

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int, cursor: str
    ) -> tuple[str, list[Entry]]:
        s, g = self._group(stream, group)
        now = time.monotonic()
        floor = _parse_id(cursor)
        candidates = sorted(i for i in g.pending if i >= floor)
        entries: list[Entry] = []
        next_cursor = "0-0"
        for n, entry_id in enumerate(candidates):
            if len(entries) == count:
                next_cursor = _format_id(candidates[n])
                break
            p = g.pending[entry_id]
            if (now - p.delivered_at) * 1000 < min_idle_ms:
                continue
            data = s.get(entry_id)
            if data is None:
                del g.pending[entry_id]  # Redis 7 drops trimmed entries from the pending list here
                continue
            p.consumer, p.deliveries, p.delivered_at = consumer, p.deliveries + 1, now
            entries.append(Entry(stream, _format_id(entry_id), data, p.deliveries))
        return next_cursor, entries

    async def settle(self, group: str, acks: dict[str, list[str]], dead: list[bytes]) -> None:
        if dead:
            self._bus._append(ls.DEAD_LETTER, dead, count=False)
        for stream, ids in acks.items():
            _, g = self._group(stream, group)
            for entry_id in ids:
                g.pending.pop(_parse_id(entry_id), None)

    async def group_stats(self, stream: str, group: str) -> tuple[int | None, int]:
        s, g = self._group(stream, group)
        lag = len(s.ids) - bisect.bisect_right(s.ids, g.last_delivered)
        return lag, len(g.pending)
