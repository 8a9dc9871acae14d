"""The bus on Redis Streams (redis-py asyncio), for services.

One stream entry per message, with one field (``ENVELOPE_FIELD``, ``"m"``)
holding the msgpack-encoded Leyline envelope, so any Redis client in any
language can read it. Streams are trimmed with ``MAXLEN ~`` from Leyline's
defaults. Needs Redis >= 6.2 (XAUTOCLAIM); written against 7.0.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from esper.leyline import CodecError, Envelope, Message, decode, encode
from esper.leyline import streams as ls
from esper.oona.bus import BusUnavailable, ConsumerOptions, Handler
from esper.oona.consumer import NEW, Consumer, Entry
from esper.oona.metrics import BusMetrics, default_metrics

T = TypeVar("T")
_FIELD = ls.ENVELOPE_FIELD.encode()
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


#: Seconds a pooled connection may sit idle before it is PINGed again before use.
HEALTH_CHECK_INTERVAL_S = 5
#: Seconds any one command may wait for its reply. Longer than a blocking read
#: (``READ_BLOCK_MS``) so that XREADGROUP's own wait never counts as a dead socket.
SOCKET_TIMEOUT_S = 10.0


def connect(url: str, **client_options: Any) -> aioredis.Redis:
    """A redis-py asyncio client with the settings the bus relies on.

    The pool never hands out a connection that died with a Redis restart: a
    connection idle for ``HEALTH_CHECK_INTERVAL_S`` is PINGed before use, and a
    command that fails with a connection error is sent once more on a fresh
    connection (no backoff, one retry: a Redis that is really down surfaces at
    once). Every command has a deadline (``SOCKET_TIMEOUT_S``; connecting:
    2 s). Timeouts are not retried here: a command that timed out may have been
    executed, and the bus decides (bounded by ``publish_timeout_s``) whether to
    send it again. Any option may be overridden by ``client_options``.

    Credentials (Redis ACL users): ``redis://user:password@host:port/db`` in the
    URL, or, kept out of the URL so that it can be logged, the environment
    variables ``ESPER_REDIS_USERNAME`` and ``ESPER_REDIS_PASSWORD`` (used only
    where the URL names none).
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    options.update(credentials_from_env(url))
    options.update(client_options)
    return aioredis.Redis.from_url(url, **options)


def credentials_from_env(url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``username``/``password`` client options from ``ESPER_REDIS_USERNAME``/``ESPER_REDIS_PASSWORD``.

    Empty where the URL carries its own credentials or the variables are unset;
    a username without a password is an error naming the variable.
    """
    env = os.environ if env is None else env
    parsed = urllib.parse.urlsplit(url)
    if parsed.username or parsed.password:
        return {}
    username, password = env.get("ESPER_REDIS_USERNAME", ""), env.get("ESPER_REDIS_PASSWORD", "")
    if username and not password:
        raise ValueError(f"ESPER_REDIS_USERNAME is {username!r} but ESPER_REDIS_PASSWORD is unset or empty")
    out = {"password": password} if password else {}
    if username:
        out["username"] = username
    return out


class RedisBus:
    """:class:`esper.oona.Bus` on Redis Streams.

    ``publish_timeout_s`` bounds how long a publish keeps retrying while Redis is
    unreachable (with backoff); after it, :class:`BusUnavailable` is raised. Use
    0 to fail at once. A publish that returned an entry id was stored by Redis
    (with ``appendfsync always``, on disk). A retried batch may store an entry
    twice if Redis took it but the reply was lost: delivery is at-least-once and
    consumers deduplicate by message id (:mod:`esper.oona.idempotency`).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        publish_timeout_s: float = 5.0,
        maxlen: Mapping[str, int] | None = None,
        metrics: BusMetrics | None = None,
        owns_client: bool = False,
    ) -> None:
        if publish_timeout_s < 0:
            raise ValueError(f"publish_timeout_s must be >= 0, got {publish_timeout_s!r}")
        self.client = client
        self.publish_timeout_s = publish_timeout_s
        self._maxlen = dict(maxlen) if maxlen is not None else {}
        self._metrics = metrics or default_metrics()
        self._owns_client = owns_client
        self._published: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBus:
        """Connect to ``url`` (``redis://host:port/db``); the bus owns and closes the client."""
        return cls(connect(url), owns_client=True, **options)

    def maxlen_for(self, stream: str) -> int:
        return self._maxlen.get(stream) or ls.maxlen_for(stream)

    async def publish(self, stream: str, envelope: Envelope[Any]) -> str:
        return await self.publish_raw(stream, encode(envelope))

    async def publish_raw(self, stream: str, data: bytes) -> str:
        maxlen = self.maxlen_for(stream)
        entry_id: Any = await self._retrying(
            stream, lambda: self.client.xadd(stream, {_FIELD: data}, maxlen=maxlen, approximate=True)
        )
        self._counter(stream).inc()
        return str(entry_id.decode())

    async def publish_many(self, stream: str, envelopes: Sequence[Envelope[Any]]) -> list[str]:
        if not envelopes:
            return []
        payloads = [encode(e) for e in envelopes]
        maxlen = self.maxlen_for(stream)

        async def send() -> list[bytes]:
            pipe = self.client.pipeline(transaction=False)
            for data in payloads:
                pipe.xadd(stream, {_FIELD: data}, maxlen=maxlen, approximate=True)
            replies: list[bytes] = await pipe.execute()
            return replies

        ids = await self._retrying(stream, send)
        self._counter(stream).inc(len(ids))
        return [i.decode() for i in ids]

    def subscribe(
        self,
        streams: str | Sequence[str],
        group: str,
        consumer: str,
        handler: Handler,
        options: ConsumerOptions | None = None,
    ) -> Consumer:
        return Consumer(_RedisBackend(self.client), streams, group, consumer, handler, options, self._metrics)

    async def ping(self) -> None:
        await self.client.ping()

    async def pending(self, stream: str, group: str, consumer: str, count: int = 100) -> list[Envelope[Message]]:
        try:
            entries = await self.client.xpending_range(stream, group, "-", "+", count, consumername=consumer)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise
        envelopes = []
        for entry in entries:
            for _, fields in await self.client.xrange(stream, entry["message_id"], entry["message_id"]):
                try:
                    envelopes.append(decode(_data(fields) or b""))
                except CodecError:
                    continue
        return envelopes

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def _counter(self, stream: str) -> Any:
        counter = self._published.get(stream)
        if counter is None:
            counter = self._published[stream] = self._metrics.published.labels(stream)
        return counter

    async def _retrying(self, stream: str, send: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.publish_timeout_s
        delay = 0.02
        while True:
            try:
                return await send()
            except _UNAVAILABLE as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._metrics.publish_failures.labels(stream).inc()
                    raise BusUnavailable(
                        f"could not publish to stream {stream!r}: Redis unreachable for "
                        f"{self.publish_timeout_s:g}s (publish_timeout_s): {exc}"
                    ) from exc
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)


class _RedisBackend:
    """The consumer's stream primitives as Redis commands."""

    unavailable: tuple[type[BaseException], ...] = _UNAVAILABLE

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    def is_missing_group(self, exc: BaseException) -> bool:
        return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def read(
        self, group: str, consumer: str, ids: dict[str, str], count: int, block_ms: int | None
    ) -> list[Entry]:
        reply: Any = await self._client.xreadgroup(group, consumer, ids, count=count, block=block_ms)  # type: ignore[arg-type]
        if not reply:
            return []
        entries: list[Entry] = []
        for raw_stream, items in reply:
            stream = raw_stream.decode()
            if ids[stream] == NEW:
                entries.extend(Entry(stream, i.decode(), _data(fields), 1) for i, fields in items)
            elif items:
                entries.extend(await self._with_counts(stream, group, consumer, items))
        return entries

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int, cursor: str
    ) -> tuple[str, list[Entry]]:
        reply: Any = await self._client.xautoclaim(stream, group, consumer, min_idle_ms, cursor, count=count)
        next_cursor = reply[0].decode()
        items = reply[1]
        return next_cursor, (await self._with_counts(stream, group, consumer, items) if items else [])

    async def settle(self, group: str, acks: dict[str, list[str]], dead: list[bytes]) -> None:
        if not dead and len(acks) == 1:
            ((stream, ids),) = acks.items()
            await self._client.xack(stream, group, *ids)
            return
        pipe = self._client.pipeline(transaction=bool(dead))
        maxlen = ls.maxlen_for(ls.DEAD_LETTER)
        for data in dead:
            pipe.xadd(ls.DEAD_LETTER, {_FIELD: data}, maxlen=maxlen, approximate=True)
        for stream, ids in acks.items():
            pipe.xack(stream, group, *ids)
        await pipe.execute()

    async def group_stats(self, stream: str, group: str) -> tuple[int | None, int]:
        try:
            groups: Any = await self._client.xinfo_groups(stream)
        except ResponseError as exc:
            if "no such key" in str(exc):
                return None, 0  # the stream is gone; the next read recreates it with the group
            raise
        for info in groups:
            name = info["name"]
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = info.get("lag")
                return (int(lag) if lag is not None else None), int(info["pending"])
        return None, 0

    async def _with_counts(self, stream: str, group: str, consumer: str, items: list[Any]) -> list[Entry]:
        """Entries re-read or claimed: their delivery counts come from the pending list."""
        first, last = items[0][0], items[-1][0]
        # The range may also hold other entries of ours (ones awaiting a retry), hence the slack in count.
        pending: Any = await self._client.xpending_range(
            stream, group, first, last, len(items) + 1_000, consumername=consumer
        )
        counts = {p["message_id"]: p["times_delivered"] for p in pending}
        return [Entry(stream, i.decode(), _data(fields), counts.get(i, 1)) for i, fields in items]


def _data(fields: dict[bytes, bytes] | None) -> bytes | None:
    """The envelope bytes; None when the entry is gone (trimmed), b"" when it has no envelope field."""
    if not fields:
        return None
    return fields.get(_FIELD, b"")
