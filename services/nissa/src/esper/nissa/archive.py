"""The per-run event archive: every recorded envelope as one JSON line.

Layout: ``<root>/<run_id>/events.jsonl``, one object per line with the keys
``message_type, message_id, run_id, schema_version, produced_at, trace_id,
payload`` (the payload as plain builtins, enums as their wire values, bytes as
base64).

Why JSONL and not Parquet: Nissa receives events one at a time and must not
lose them if it dies, so the archive is append-only and flushed per event.
A JSON line is complete the moment it is written, readable by ``tail -f``,
``jq`` or any language without Esper installed, and it tolerates the nested,
per-type payloads (lists of seed reports, attribute maps) without a schema per
message type. Parquet wants batched, columnar, schema-fixed writes: a crash
loses the open row group, and mixing message types means one file per type.
Runs are small (thousands of events), so the size Parquet would save is not
worth it; convert offline (pandas/pyarrow read JSONL directly) when analysing.

JSON has no NaN or infinity: non-finite floats are archived as ``null``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from esper.leyline import Envelope, Message
from esper.nissa.runs import run_directory

EVENTS_FILE = "events.jsonl"


class ArchivedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One archived envelope as read back from ``events.jsonl``."""

    message_type: str
    message_id: str
    run_id: str
    schema_version: str
    produced_at: float
    trace_id: str
    payload: dict[str, Any]


class ArchiveFormatError(ValueError):
    """A line of an archive file that is not an archived event."""

    def __init__(self, path: Path, line_number: int, problem: str) -> None:
        self.path = path
        self.line_number = line_number
        super().__init__(f"{path}, line {line_number}: {problem}")


class _MessageId(msgspec.Struct):
    message_id: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ArchivedEvent)
_id_decoder = msgspec.json.Decoder(_MessageId)


class RunArchive:
    """Append-only JSONL archive of envelopes, one file per run under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        """The archive file of ``run_id`` (raises :class:`~esper.nissa.runs.InvalidRunIdError` on an unsafe id)."""
        return run_directory(self.root, run_id) / EVENTS_FILE

    def append(self, envelope: Envelope[Message]) -> None:
        """Write ``envelope`` as one line and flush it to the OS before returning."""
        record = ArchivedEvent(
            message_type=envelope.message_type,
            message_id=envelope.message_id,
            run_id=envelope.run_id,
            schema_version=envelope.schema_version,
            produced_at=envelope.produced_at,
            trace_id=envelope.trace_id,
            payload=msgspec.to_builtins(envelope.payload),
        )
        line = _encoder.encode(record) + b"\n"
        directory = run_directory(self.root, envelope.run_id, create=True)
        # One write() on an O_APPEND descriptor: the line lands whole at the end even if
        # another process appends to the same file, and nothing sits in a user-space buffer.
        fd = os.open(directory / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self, run_id: str) -> Iterator[ArchivedEvent]:
        """The archived events of ``run_id`` in the order they were written (none if the run has no archive).

        A final line without its newline (a writer killed mid-write) is skipped;
        any other malformed line raises :class:`ArchiveFormatError`.
        """
        path = self.path(run_id)
        if not path.exists():
            return
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    return
                if not line.strip():
                    continue
                try:
                    yield _decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise ArchiveFormatError(path, number, str(exc)) from None

    def message_ids_since(self, run_id: str, offset: int, max_bytes: int) -> tuple[list[str], int]:
        """Message ids archived for ``run_id`` from byte ``offset`` on (at most the last ``max_bytes``), and the end.

        Nissa reads these back so that a message it archived but could not
        acknowledge (killed in between, or a replica that died) is not archived
        again when it is redelivered. A final line without its newline (a writer
        killed mid-write) is cut off here, so that the redelivered message's line
        starts on a line of its own; an unreadable line is skipped.
        """
        path = self.path(run_id)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return [], 0
        try:
            size = os.fstat(fd).st_size
            offset = offset if offset <= size else 0  # the file was replaced: read it afresh
            start = max(offset, size - max_bytes, 0)
            data = os.pread(fd, size - start, start)
            end = size
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                os.ftruncate(fd, start + cut)
                data, end = data[:cut], start + cut
        finally:
            os.close(fd)
        lines = data.split(b"\n")
        if start > 0 and start != offset:
            lines = lines[1:]  # began mid-line
        ids = []
        for line in lines:
            if line.strip():
                try:
                    ids.append(_id_decoder.decode(line).message_id)
                except msgspec.DecodeError:
                    continue
        return ids, end

    def runs(self) -> list[str]:
        """Run ids that have an archive under ``root``, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{EVENTS_FILE}"))
