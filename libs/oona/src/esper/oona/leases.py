"""Run leases in Redis: which replica of a consumer group owns a run, and the stream operations ownership needs.

A lease is a key ``esper:own:<group>:lease:<run_id>`` holding the owner's
name, set with ``NX PX ttl`` and extended by its holder (Lua compare-and-
extend), released by compare-and-delete: at most one live holder per run,
and a dead holder's lease expires on Redis' clock, not the replicas'. The
router's own lease (:data:`ROUTER_LEASE`) elects the one replica that routes.
Beside the leases: replica heartbeats (for rendezvous hashing), an index of
runs seen, ended-run markers, and the stream operations a takeover needs
(``take_pending``, ``hold``, ``drain``, ``unacked``, ``forward``). See
:mod:`esper.oona.ownership` for how they fit together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from esper.leyline import CodecError, Envelope, Message, decode, encode
from esper.leyline import streams as ls
from esper.oona.redis_bus import RedisBus

_FIELD = ls.ENVELOPE_FIELD.encode()
#: The lease name the router of a group holds.
ROUTER_LEASE = "~router"
#: How long an ended run's marker (and its routed streams) are kept.
ENDED_TTL_S = 7 * 24 * 3600
#: Index entries older than this are dropped by scans (a run silent for a day needs no owner).
INDEX_HORIZON_S = 24 * 3600

_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RENEW = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) out[i] = 1 else out[i] = 0 end
end
return out
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: KEYS: routed stream, ended marker, index. ARGV: data, maxlen, run id, check ended?, index?, now, field.
_FORWARD = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[7], ARGV[1])
if ARGV[5] == '1' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3]) end
return id
"""


def rendezvous(run_id: str, replicas: Sequence[str]) -> str | None:
    """The replica ``run_id`` belongs to among ``replicas`` (highest hash wins; stable as replicas come and go)."""
    if not replicas:
        return None
    return max(replicas, key=lambda r: hashlib.sha1(f"{r}|{run_id}".encode()).digest())


class Leases:
    """Run leases of one consumer group, held by ``holder``, each valid ``ttl_ms`` after its last renewal."""

    def __init__(self, client: aioredis.Redis, group: str, holder: str, ttl_ms: int = 10_000) -> None:
        if not isinstance(ttl_ms, int) or ttl_ms < 100:
            raise ValueError(f"lease ttl_ms must be an integer >= 100, got {ttl_ms!r}")
        for label, value in (("group", group), ("holder", holder)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"lease {label} must be a non-empty string, got {value!r}")
        self.client, self.group, self.holder, self.ttl_ms = client, group, holder, ttl_ms
        self._prefix = f"{ls.OWNERSHIP_PREFIX}:{group}"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._forward = client.register_script(_FORWARD)

    @classmethod
    def on(cls, bus: RedisBus, group: str, holder: str, ttl_ms: int = 10_000) -> Leases:
        """Leases on ``bus``'s Redis."""
        return cls(bus.client, group, holder, ttl_ms)

    def key(self, run_id: str) -> str:
        return f"{self._prefix}:lease:{run_id}"

    @property
    def index_key(self) -> str:
        """Sorted set of run ids the router saw (score: when), which :meth:`OwnedRuns.scan` adopts from."""
        return f"{self._prefix}:runs"

    # -- leases -------------------------------------------------------------------
    async def acquire(self, run_id: str) -> bool:
        """Take (or keep) the lease of ``run_id``; False when another holder has it."""
        return bool(await self._acquire(keys=[self.key(run_id)], args=[self.holder, self.ttl_ms]))

    async def renew(self, run_ids: Sequence[str]) -> set[str]:
        """Extend the leases of ``run_ids``; returns those no longer held (expired, taken by another)."""
        if not run_ids:
            return set()
        held = await self._renew(keys=[self.key(r) for r in run_ids], args=[self.holder, self.ttl_ms])
        return {r for r, ok in zip(run_ids, held, strict=True) if not ok}

    async def release(self, run_id: str) -> None:
        """Give the lease up if this holder has it."""
        await self._release(keys=[self.key(run_id)], args=[self.holder])

    async def owner(self, run_id: str) -> str | None:
        value = await self.client.get(self.key(run_id))
        return None if value is None else value.decode()

    async def owners(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        if not run_ids:
            return {}
        values = await self.client.mget([self.key(r) for r in run_ids])
        return {r: (None if v is None else v.decode()) for r, v in zip(run_ids, values, strict=True)}

    # -- replicas and run index ----------------------------------------------------
    async def heartbeat(self) -> None:
        """Say this replica is alive for one ttl."""
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(f"{self._prefix}:replicas", self.holder)
        pipe.set(f"{self._prefix}:alive:{self.holder}", 1, px=self.ttl_ms)
        await pipe.execute()

    async def live_replicas(self) -> list[str]:
        """Replicas whose heartbeat has not expired, sorted; dead ones are dropped from the set."""
        names = sorted(n.decode() for n in await self.client.smembers(f"{self._prefix}:replicas"))
        if not names:
            return []
        alive = await self.client.mget([f"{self._prefix}:alive:{n}" for n in names])
        dead = [n for n, a in zip(names, alive, strict=True) if a is None]
        if dead:
            await self.client.srem(f"{self._prefix}:replicas", *dead)
        return [n for n, a in zip(names, alive, strict=True) if a is not None]

    async def indexed_runs(self, now: float) -> list[str]:
        """Run ids the router saw within :data:`INDEX_HORIZON_S` of ``now`` (older ones are dropped)."""
        await self.client.zremrangebyscore(self.index_key, "-inf", now - INDEX_HORIZON_S)
        return [m.decode() for m in await self.client.zrange(self.index_key, 0, -1)]

    async def unindex(self, run_id: str) -> None:
        await self.client.zrem(self.index_key, run_id)

    # -- ended runs ---------------------------------------------------------------
    def ended_key(self, run_id: str) -> str:
        return f"{self._prefix}:ended:{run_id}"

    async def mark_ended(self, run_id: str) -> None:
        """From now on the router forwards nothing for ``run_id`` (see :meth:`forward`)."""
        await self.client.set(self.ended_key(run_id), 1, ex=ENDED_TTL_S)

    async def is_ended(self, run_id: str) -> bool:
        return bool(await self.client.exists(self.ended_key(run_id)))

    # -- stream operations -----------------------------------------------------------
    async def forward(
        self, stream: str, envelope: Envelope[Any], *, unless_ended: bool = False, index: bool = False, now: float = 0
    ) -> str | None:
        """Append ``envelope`` to ``stream`` atomically with the checks; None when its run has ended."""
        run_id = envelope.run_id
        entry = await self._forward(
            keys=[stream, self.ended_key(run_id), self.index_key],
            args=[encode(envelope), ls.maxlen_for(stream), run_id, int(unless_ended), int(index), now, _FIELD],
        )
        return None if entry is None else entry.decode()

    async def ensure_group(self, stream: str, group: str) -> None:
        try:
            await self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def take_pending(self, stream: str, group: str, consumer: str) -> int:
        """Move every pending entry of ``group`` on ``stream`` to ``consumer`` (a lease holder taking over)."""
        cursor, moved = "0-0", 0
        while True:
            reply: Any = await self.client.xautoclaim(stream, group, consumer, 0, cursor, count=100)
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            moved += len(reply[1])
            if cursor in ("0-0", "0"):
                return moved

    async def hold(self, stream: str, group: str, consumer: str, entry_id: str) -> None:
        """Reset the idle time of a pending entry ``consumer`` holds, so no one claims it from a live holder."""
        await self.client.xclaim(stream, group, consumer, 0, [entry_id], justid=True)

    async def drain(self, stream: str, group: str, consumer: str) -> list[Envelope[Message]]:
        """Read and ack everything ``consumer`` holds or could still read on ``stream`` (a run's leftovers)."""
        out: list[Envelope[Message]] = []
        for start in ("0-0", ">"):
            while True:
                reply: Any = await self.client.xreadgroup(group, consumer, {stream: start}, count=100)
                items = reply[0][1] if reply else []
                if not items:
                    break
                for _, fields in items:
                    if not fields:
                        continue  # trimmed away while pending
                    try:
                        out.append(decode(fields.get(_FIELD, b"")))
                    except CodecError:
                        continue
                await self.client.xack(stream, group, *[i for i, _ in items])
        return out

    async def unacked(self, stream: str, group: str, limit: int = 1_000) -> list[Envelope[Message]]:
        """Envelopes on ``stream`` that ``group`` has not acknowledged yet (queued or in flight), oldest first."""
        try:
            groups: Any = await self.client.xinfo_groups(stream)
        except ResponseError:
            return []
        info = next((g for g in groups if _text(g["name"]) == group), None)
        if info is None:
            return []
        ids = [p["message_id"] for p in await self.client.xpending_range(stream, group, "-", "+", limit)]
        last = _text(info["last-delivered-id"])
        entries: list[tuple[Any, Any]] = []
        for entry_id in ids:
            entries += await self.client.xrange(stream, entry_id, entry_id)
        entries += await self.client.xrange(stream, f"({last}", "+", count=limit)
        out = []
        for _, fields in entries:
            try:
                out.append(decode(fields.get(_FIELD, b"")))
            except CodecError:
                continue
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
