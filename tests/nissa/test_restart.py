"""Archive exactly once across restarts: a Nissa killed between writing a line and acking it.

The bus redelivers what was not acknowledged, and a fresh Nissa has an empty
duplicate filter, so without reading its archive back it would write those lines
twice. Here a real Nissa process is SIGKILLed right after an archive write (its
batch unacknowledged), restarted, and every message is in the archive exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis

from esper.cli.redis_local import free_port
from esper.leyline import Envelope, TelemetryEvent, streams
from esper.nissa.archive import RunArchive
from esper.nissa.sink import Nissa

from .test_service import eventually, publish

RUN = "restart-run"

# A Nissa service whose archive SIGKILLs the process right after its KILL_AFTER-th write:
# the line is on disk, the batch is not acknowledged.
KILLING_NISSA = """
import asyncio, os, signal, sys
from esper.nissa import archive
from esper.nissa.service.__main__ import main
limit, writes, append = int(os.environ["KILL_AFTER"]), [0], archive.RunArchive.append
def append_then_die(self, envelope):
    append(self, envelope)
    writes[0] += 1
    if writes[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
archive.RunArchive.append = append_then_die
sys.exit(asyncio.run(main(sys.argv[1:])))
"""


def signals(n: int) -> list[Envelope]:
    return [Envelope(payload=TelemetryEvent(kind="probe", epoch=i), run_id=RUN) for i in range(n)]


def archived_ids(root: Path, run_id: str = RUN) -> Counter[str]:
    return Counter(e.message_id for e in RunArchive(root).read(run_id))


@pytest.mark.slow
def test_nissa_killed_between_archive_write_and_ack_archives_once_after_restart(
    clean_redis_url: str, tmp_path: Path
) -> None:
    sent = signals(12)
    publish(clean_redis_url, streams.TELEMETRY_EVENTS, sent)
    archive_dir = tmp_path / "archive"
    args = ["--redis-url", clean_redis_url, "--port", str(free_port()), "--consumer", "nissa-restart"]
    args += ["--archive-dir", str(archive_dir), "--runs-dir", str(tmp_path / "runs")]
    env = {**os.environ, "KILL_AFTER": "5"}
    killed = subprocess.run([sys.executable, "-c", KILLING_NISSA, *args], env=env, capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert sum(archived_ids(archive_dir).values()) == 5
    client = redis.Redis.from_url(clean_redis_url)
    assert client.xpending(streams.TELEMETRY_EVENTS, streams.GROUP_NISSA)["pending"] == 12  # none acked

    # Restarted under the same consumer name: it reads its pending entries again first.
    restarted = subprocess.Popen([sys.executable, "-m", "esper.nissa.service", *args], stderr=subprocess.PIPE)
    try:
        eventually(
            lambda: client.xpending(streams.TELEMETRY_EVENTS, streams.GROUP_NISSA)["pending"] == 0,
            timeout_s=60,
            what="every entry acknowledged after the restart",
        )
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    counts = archived_ids(archive_dir)
    assert set(counts) == {e.message_id for e in sent}
    assert [i for i, n in counts.items() if n > 1] == []


def test_a_fresh_nissa_drops_what_a_previous_one_archived(tmp_path: Path) -> None:
    sent = signals(5)
    first = Nissa(tmp_path)
    for envelope in sent[:3]:
        first.handle(envelope)
    second = Nissa(tmp_path)  # a restart: empty in-memory filter
    for envelope in sent:
        second.handle(envelope, redelivered=True)
    assert archived_ids(tmp_path) == Counter({e.message_id: 1 for e in sent})
    duplicates = second.metrics.registry.get_sample_value("esper_nissa_anomalies_total", {"kind": "duplicate_delivery"})
    assert duplicates == 3


def test_a_redelivery_sees_what_another_replica_archived_since(tmp_path: Path) -> None:
    """A claims a dead replica's entries: the lines that replica wrote after A last read the run are found."""
    sent = signals(4)
    survivor, dead = Nissa(tmp_path), Nissa(tmp_path)
    survivor.handle(sent[0])  # the survivor has read the run's archive back once already
    dead.handle(sent[1])  # archived, never acknowledged: the survivor claims it
    survivor.handle(sent[1], redelivered=True)
    survivor.handle(sent[2], redelivered=True)  # claimed but never archived: written now
    assert archived_ids(tmp_path) == Counter({e.message_id: 1 for e in sent[:3]})


def test_a_line_cut_short_by_a_kill_is_removed_and_written_whole(tmp_path: Path) -> None:
    sent = signals(3)
    first = Nissa(tmp_path)
    for envelope in sent[:2]:
        first.handle(envelope)
    path = RunArchive(tmp_path).path(RUN)
    whole = path.read_bytes()
    first_again = Nissa(tmp_path / "scratch")
    first_again.handle(sent[2])
    partial = RunArchive(tmp_path / "scratch").path(RUN).read_bytes()[:40]  # killed mid-write
    path.write_bytes(whole + partial)
    Nissa(tmp_path).handle(sent[2], redelivered=True)
    assert path.read_bytes().startswith(whole)
    assert [e.message_id for e in RunArchive(tmp_path).read(RUN)] == [e.message_id for e in sent]


def test_read_back_is_bounded_to_the_archive_tail(tmp_path: Path) -> None:
    sent = signals(50)
    nissa = Nissa(tmp_path)
    for envelope in sent:
        nissa.handle(envelope)
    archive = RunArchive(tmp_path)
    size = archive.path(RUN).stat().st_size
    ids, end = archive.message_ids_since(RUN, 0, size // 5)
    assert end == size
    assert 0 < len(ids) < 50
    assert ids == [e.message_id for e in sent][-len(ids) :]  # whole lines only, the newest
    assert archive.message_ids_since(RUN, end, size) == ([], size)  # nothing new since
    assert archive.message_ids_since("no-such-run", 0, size) == ([], 0)
