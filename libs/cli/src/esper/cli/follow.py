"""Following one run on the bus from outside the stack: read its messages straight from the streams.

:class:`RunFeed` uses plain ``XREAD`` (no consumer group), so watching a run
takes nothing away from the services' groups. :func:`group_caught_up` tells
whether a consumer group (Nissa's) has handled every entry of its streams.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis

from esper.leyline import Envelope, Message, decode, streams
from esper.leyline.codec import CodecError

#: What a watcher of one run reads: its telemetry, decisions, commands and results.
RUN_STREAMS: tuple[str, ...] = (
    streams.TELEMETRY_TRAINING,
    streams.TELEMETRY_EVENTS,
    streams.CONTROL_DECISIONS,
    streams.CONTROL_COMMANDS,
    streams.CONTROL_RESULTS,
)
_FIELD = streams.ENVELOPE_FIELD.encode()


def stream_tails(client: redis.Redis, names: Iterable[str]) -> dict[str, str]:
    """The id of the last entry of each stream (``0-0`` when empty), to read only what comes after."""
    tails: dict[str, str] = {}
    for name in names:
        last = client.xrevrange(name, count=1)
        tails[name] = last[0][0].decode() if last else "0-0"
    return tails


class RunFeed:
    """New messages of ``run_id`` on ``names`` after ``start`` (stream -> entry id; default: from the beginning)."""

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        names: Sequence[str] = RUN_STREAMS,
        start: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.cursor = {name: (start or {}).get(name, "0-0") for name in names}

    def poll(self, block_ms: int = 500) -> list[tuple[str, Envelope[Message]]]:
        """``(stream, envelope)`` for this run's entries that arrived since the last poll (bad bytes skipped)."""
        replies = self.client.xread(self.cursor, count=500, block=block_ms) or []
        out: list[tuple[str, Envelope[Message]]] = []
        for stream_name, entries in replies:
            name = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
            for entry_id, fields in entries:
                self.cursor[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                data = fields.get(_FIELD)
                if data is None:
                    continue
                try:
                    envelope = decode(data)
                except CodecError:
                    continue  # poison is the consumers' business (they dead-letter it); a watcher skips it
                if envelope.run_id == self.run_id:
                    out.append((name, envelope))
        return out


def group_caught_up(client: redis.Redis, names: Iterable[str], group: str) -> bool:
    """Whether ``group`` has read and acknowledged every entry of every stream in ``names``."""
    for name in names:
        if not client.exists(name):
            continue
        last_id = client.xinfo_stream(name)["last-generated-id"]
        groups = {g["name"].decode(): g for g in client.xinfo_groups(name)}
        info = groups.get(group)
        if info is None or info["pending"] > 0 or info["last-delivered-id"] != last_id:
            return False
    return True


def wait_caught_up(client: redis.Redis, names: Iterable[str], group: str, timeout_s: float) -> bool:
    """Poll :func:`group_caught_up` until true or ``timeout_s``; returns the last answer."""
    names = tuple(names)
    deadline = time.monotonic() + timeout_s
    while not group_caught_up(client, names, group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
