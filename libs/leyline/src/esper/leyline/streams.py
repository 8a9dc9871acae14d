"""Stream names, consumer groups and bus defaults: the only place they are spelled."""

from __future__ import annotations

TELEMETRY_TRAINING = "esper.telemetry.training"
TELEMETRY_HEALTH = "esper.telemetry.health"
CONTROL_COMMANDS = "esper.control.commands"
CONTROL_RESULTS = "esper.control.results"
#: operator (control API) -> Tolaria: training jobs to run.
CONTROL_JOBS = "esper.control.jobs"
#: Tamiyo -> Nissa: every policy decision with its reason, confidence and the safety verdict.
CONTROL_DECISIONS = "esper.control.decisions"
COMPILE_REQUESTS = "esper.compile.requests"
COMPILE_RESULTS = "esper.compile.results"
TELEMETRY_EVENTS = "esper.telemetry.events"
DEAD_LETTER = "esper.dlq"

ALL_STREAMS: tuple[str, ...] = (
    TELEMETRY_TRAINING,
    TELEMETRY_HEALTH,
    TELEMETRY_EVENTS,
    CONTROL_COMMANDS,
    CONTROL_RESULTS,
    CONTROL_DECISIONS,
    CONTROL_JOBS,
    COMPILE_REQUESTS,
    COMPILE_RESULTS,
    DEAD_LETTER,
)

#: Consumer groups, one per consuming service.
GROUP_TAMIYO = "tamiyo"
GROUP_TOLARIA = "tolaria"
GROUP_NISSA = "nissa"
GROUP_TEZZERET = "tezzeret"

#: The one field of a stream entry that holds the msgpack-encoded envelope.
ENVELOPE_FIELD = "m"

#: Approximate (``MAXLEN ~``) length each stream is trimmed to.
DEFAULT_MAXLEN = 100_000
MAXLEN: dict[str, int] = {
    TELEMETRY_TRAINING: 100_000,
    TELEMETRY_HEALTH: 100_000,
    TELEMETRY_EVENTS: 100_000,
    CONTROL_COMMANDS: 50_000,
    CONTROL_RESULTS: 50_000,
    CONTROL_DECISIONS: 50_000,
    CONTROL_JOBS: 10_000,
    COMPILE_REQUESTS: 10_000,
    COMPILE_RESULTS: 10_000,
    DEAD_LETTER: 100_000,
}

#: Deliveries after which a message that keeps failing goes to the dead-letter stream.
MAX_DELIVERIES = 5
#: Milliseconds a pending entry sits unacknowledged before another consumer may claim it.
CLAIM_IDLE_MS = 30_000
#: Seconds a processed message id is remembered for idempotency.
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
#: Longest blocking read, milliseconds.
READ_BLOCK_MS = 1_000
#: Entries read per XREADGROUP call.
READ_COUNT = 64


def maxlen_for(stream: str) -> int:
    return MAXLEN.get(stream, DEFAULT_MAXLEN)


#: Prefix of the per-run streams a service's router fills (``routed_stream``).
ROUTED_PREFIX = "esper.route"
#: Key prefix of run leases and routing state in Redis (``esper.oona.ownership``).
OWNERSHIP_PREFIX = "esper:own"


def routed_stream(group: str, lane: str, run_id: str) -> str:
    """The stream holding ``run_id``'s messages of ``lane`` for the replica of ``group`` that owns the run.

    A service that scales out (several replicas in one group) reads its shared
    streams through one router, which copies each message, in order, onto
    ``esper.route.<group>.<lane>.<run_id>``; only the run's owner reads that.
    """
    for label, value in (("group", group), ("lane", lane), ("run_id", run_id)):
        if not value:
            raise ValueError(f"routed_stream: {label} must be non-empty, got {value!r}")
    return f"{ROUTED_PREFIX}.{group}.{lane}.{run_id}"
