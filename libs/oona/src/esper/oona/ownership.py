"""Run ownership: which replica of a service handles a run, so replicas scale out without misrouting.

A service with several replicas in one consumer group (three Tolarias, two
Tamiyos) must handle each run's messages in one place, in order. Three parts,
shared by every such service:

* :class:`Leases` - a lease per run in Redis (``SET NX PX``, renewed by its
  holder, compare-and-delete on release), plus the few stream operations
  ownership needs (take over a dead holder's pending entries, keep an entry
  held, forward a message unless its run has ended).
* :class:`RunRouter` - one replica at a time (the holder of the router lease)
  reads the service's shared streams in its group and copies each message, in
  stream order, onto the run's own stream
  (:func:`esper.leyline.streams.routed_stream`); a dead router's unacked entries
  are taken over by the next one (copies are at-least-once: consumers are
  idempotent by message id, command id and epoch).
* :class:`OwnedRuns` - the runs this replica owns: their leases, renewed in the
  background, and a consumer on each of their routed streams. A replica that
  dies stops renewing; once the lease expires another replica adopts the run
  and takes over the dead one's pending entries (``XAUTOCLAIM`` with no idle
  time: the lease says the holder is gone), so nothing is lost or handled by
  two replicas at once.

Who adopts a run is the service's choice: Tolaria adopts the run of the job it
takes from the shared jobs queue; Tamiyo adopts runs by rendezvous hashing over
the live replicas (:meth:`OwnedRuns.scan`). Leases use Redis' clock (PX), not
the replicas', so they need no synchronized clocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from esper.leyline import Envelope, Message
from esper.leyline import streams as ls
from esper.oona.bus import ConsumerOptions, Delivery, Handler, Subscription
from esper.oona.leases import ENDED_TTL_S, ROUTER_LEASE, Leases, rendezvous
from esper.oona.redis_bus import RedisBus

log = logging.getLogger("esper.oona.ownership")
#: Redis unreachable or refusing: the loops log, back off and try again; they never end the service.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Lane:
    """One kind of a run's messages, consumed separately: ``sources`` are the shared streams routed into it."""

    name: str
    sources: tuple[str, ...]
    handler: Handler
    options: ConsumerOptions = field(default_factory=ConsumerOptions)


@dataclass(frozen=True, slots=True)
class HeldEntry:
    """A pending entry kept held (idle time reset) as long as the run's lease (Tolaria's job)."""

    stream: str
    group: str
    consumer: str
    entry_id: str


@dataclass(slots=True)
class _Owned:
    subscriptions: list[Subscription]
    tasks: list[asyncio.Task[None]]
    hold: HeldEntry | None


#: ``await admit(lane, envelope)``: None to forward, else the reason it is not (the router drops it).
Admit = Callable[[str, Envelope[Message]], Awaitable[str | None]]
#: ``await on_refused(lane, envelope, reason)``: answer a message that will not reach any owner.
Refused = Callable[[str, Envelope[Message], str], Awaitable[None]]
#: Callbacks on adoption (before the run's consumers start) and on losing a lease.
RunHook = Callable[[str], Awaitable[None]]
#: ``await on_leftover(lane, envelopes)``: messages still queued for a run that ended.
Leftovers = Callable[[str, list[Envelope[Message]]], Awaitable[None]]


class RunRouter:
    """Copies the group's shared streams onto per-run streams; one replica routes at a time (module docstring).

    ``admit`` may refuse a message (an unknown run); ``unless_ended`` drops
    messages of runs marked ended (atomically with the copy) and hands both to
    ``on_refused``; ``index`` records each run in the group's run index.
    """

    def __init__(
        self,
        bus: RedisBus,
        leases: Leases,
        lanes: Sequence[Lane],
        *,
        admit: Admit | None = None,
        on_refused: Refused | None = None,
        unless_ended: bool = False,
        index: bool = False,
        options: ConsumerOptions | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bus, self.leases = bus, leases
        self.group = leases.group
        self.lane_of = {source: lane.name for lane in lanes for source in lane.sources}
        self.admit, self.on_refused = admit, on_refused
        self.unless_ended, self.index = unless_ended, index
        self.options = options or ConsumerOptions()
        self.leading = False
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._clock = clock or _wall_clock

    async def run(self) -> None:
        """Try to lead every ttl/3; while leading, route; return after :meth:`stop`."""
        every = self.leases.ttl_ms / 3000.0
        self._running = True
        try:
            while not self._stop.is_set():
                try:
                    if await self.leases.acquire(ROUTER_LEASE):
                        await self._lead(every)
                except STORE_ERRORS as exc:
                    log.warning("router %s/%s: bus error (%s); retrying", self.group, self.leases.holder, exc)
                await _sleep(self._stop, every)
        finally:
            self._done.set()

    async def _lead(self, every: float) -> None:
        for source in self.lane_of:
            await self.leases.ensure_group(source, self.group)
            await self.leases.take_pending(source, self.group, self.leases.holder)
        consumer = self.bus.subscribe(tuple(self.lane_of), self.group, self.leases.holder, self._route, self.options)
        task = asyncio.create_task(consumer.run())
        self.leading = True
        log.info("router %s: %s leads", self.group, self.leases.holder)
        try:
            while not self._stop.is_set() and not task.done():
                await _sleep(self._stop, every)
                if await self.leases.renew([ROUTER_LEASE]):
                    log.warning("router %s: %s lost the router lease", self.group, self.leases.holder)
                    break
        finally:
            self.leading = False
            await consumer.stop()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        """Stop routing (the router lease expires, or is taken by the next replica); return once stopped."""
        self._stop.set()
        if self._running:
            await self._done.wait()
        try:
            await self.leases.release(ROUTER_LEASE)
        except STORE_ERRORS:
            pass  # it expires on its own

    async def _route(self, envelope: Envelope[Message], delivery: Delivery) -> None:
        lane = self.lane_of[delivery.stream]
        if not envelope.run_id:
            log.warning("router %s: %s on %s has no run id; dropped", self.group, envelope.message_type, lane)
            return
        reason = await self.admit(lane, envelope) if self.admit is not None else None
        if reason is None:
            stored = await self.leases.forward(
                ls.routed_stream(self.group, lane, envelope.run_id),
                envelope,
                unless_ended=self.unless_ended,
                index=self.index,
                now=self._clock(),
            )
            if stored is not None:
                return
            reason = "ended"
        if self.on_refused is not None:
            await self.on_refused(lane, envelope, reason)


class OwnedRuns:
    """The runs this replica owns (module docstring): leases, their renewal, and their consumers."""

    def __init__(
        self,
        bus: RedisBus,
        leases: Leases,
        lanes: Sequence[Lane],
        *,
        on_adopt: RunHook | None = None,
        on_lost: RunHook | None = None,
        capacity: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bus, self.leases, self.lanes = bus, leases, tuple(lanes)
        self.group, self.consumer = leases.group, leases.holder
        self.on_adopt, self.on_lost = on_adopt, on_lost
        self.capacity = capacity
        self._runs: dict[str, _Owned] = {}
        self._adopting: set[str] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._clock = clock or _wall_clock

    @property
    def runs(self) -> list[str]:
        return sorted(self._runs)

    def owns(self, run_id: str) -> bool:
        return run_id in self._runs

    async def adopt(self, run_id: str, hold: HeldEntry | None = None) -> bool:
        """Own ``run_id``: take its lease (False when another replica holds it), take over what a previous
        owner left pending on its streams, call ``on_adopt``, start consuming them."""
        if run_id in self._runs:
            self._runs[run_id].hold = hold or self._runs[run_id].hold
            return await self.leases.acquire(run_id)
        if not await self.leases.acquire(run_id):
            return False
        self._adopting.add(run_id)
        try:
            if self.on_adopt is not None:
                await self.on_adopt(run_id)
            owned = _Owned([], [], hold)
            for lane in self.lanes:
                stream = ls.routed_stream(self.group, lane.name, run_id)
                await self.leases.ensure_group(stream, self.group)
                moved = await self.leases.take_pending(stream, self.group, self.consumer)
                if moved:
                    log.info("%s: run %s: took over %d pending %s entries", self.consumer, run_id, moved, lane.name)
                sub = self.bus.subscribe(stream, self.group, self.consumer, lane.handler, lane.options)
                owned.subscriptions.append(sub)
                owned.tasks.append(asyncio.create_task(sub.run()))
            self._runs[run_id] = owned
        except BaseException:
            await self.leases.release(run_id)
            raise
        finally:
            self._adopting.discard(run_id)
        log.info("%s: owns run %s", self.consumer, run_id)
        return True

    async def release(self, run_id: str, *, ended: bool = False, on_leftover: Leftovers | None = None) -> None:
        """Stop consuming ``run_id`` and give its lease up. ``ended``: the run is over - nothing more is routed
        to it, and what is still queued for it goes to ``on_leftover`` (then its streams expire)."""
        if ended:
            await self.leases.mark_ended(run_id)
        owned = self._runs.pop(run_id, None)
        if owned is not None:
            await _stop_all(owned)
        if ended:
            for lane in self.lanes:
                stream = ls.routed_stream(self.group, lane.name, run_id)
                left = await self.leases.drain(stream, self.group, self.consumer)
                if left and on_leftover is not None:
                    await on_leftover(lane.name, left)
                await self.leases.client.expire(stream, ENDED_TTL_S)
            await self.leases.unindex(run_id)
        await self.leases.release(run_id)

    async def keep(self) -> None:
        """Renew every owned lease (and held entry) every ttl/3 until :meth:`close`; a lost lease stops the
        run's consumers and calls ``on_lost``."""
        every = self.leases.ttl_ms / 3000.0
        while not self._stop.is_set():
            try:
                await self._renew()
            except STORE_ERRORS as exc:
                log.warning("%s: lease renewal failed (%s); retrying", self.consumer, exc)
            await _sleep(self._stop, every)

    async def _renew(self) -> None:
        await self.leases.heartbeat()
        run_ids = list(self._runs)
        lost = await self.leases.renew(run_ids)
        for run_id in run_ids:
            owned = self._runs.get(run_id)
            if run_id not in lost and owned is not None and owned.hold is not None:
                h = owned.hold
                await self.leases.hold(h.stream, h.group, h.consumer, h.entry_id)
        for run_id in lost:
            # A renewal that came late (a starved event loop) finds the lease expired but free: nobody else can
            # have adopted the run, so taking it again is safe. Only a lease another replica holds is lost.
            if run_id in self._runs and await self.leases.acquire(run_id):
                log.warning("%s: lease of run %s expired before its renewal; taken again", self.consumer, run_id)
                continue
            owned = self._runs.pop(run_id, None)
            if owned is None:
                continue
            log.error("%s: lost the lease of run %s; another replica owns it now", self.consumer, run_id)
            if self.on_lost is not None:
                await self.on_lost(run_id)
            # Stopping waits for the handlers in flight, which on_lost has told to give up: not inline.
            task = asyncio.create_task(_stop_all(owned))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def scan(self, every_s: float | None = None) -> None:
        """Adopt, until :meth:`close`, every indexed run without a live owner that rendezvous hashing over
        the live replicas gives to this one (Tamiyo's way of sharing runs)."""
        every = every_s if every_s is not None else self.leases.ttl_ms / 3000.0
        while not self._stop.is_set():
            try:
                await self.scan_once()
            except STORE_ERRORS as exc:
                log.warning("%s: run scan failed (%s); retrying", self.consumer, exc)
            await _sleep(self._stop, every)

    async def scan_once(self) -> list[str]:
        """One scan (see :meth:`scan`); returns the runs adopted."""
        await self.leases.heartbeat()
        live = await self.leases.live_replicas()
        if self.consumer not in live:
            live = sorted({*live, self.consumer})
        runs = await self.leases.indexed_runs(self._clock())
        owners = await self.leases.owners(runs)
        adopted = []
        for run_id, owner in owners.items():
            if owner is not None or run_id in self._adopting:
                continue
            if self.capacity is not None and len(self._runs) >= self.capacity:
                break
            if rendezvous(run_id, live) == self.consumer and await self.adopt(run_id):
                adopted.append(run_id)
        return adopted

    async def close(self) -> None:
        """Stop renewing and consuming; give every lease up so other replicas adopt the runs at once."""
        self._stop.set()
        for run_id in list(self._runs):
            owned = self._runs.pop(run_id)
            await _stop_all(owned)
            try:
                await self.leases.release(run_id)
            except STORE_ERRORS:
                pass  # the lease expires on its own


async def _stop_all(owned: _Owned) -> None:
    for sub in owned.subscriptions:
        await sub.stop()
    await asyncio.gather(*owned.tasks, return_exceptions=True)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _wall_clock() -> float:
    return time.time()


__all__ = [
    "HeldEntry",
    "Lane",
    "Leases",
    "OwnedRuns",
    "RunRouter",
]
