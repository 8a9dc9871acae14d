"""A local, size-bounded LRU cache of kernel artifacts, verified against their sha256 on every load.

Files are named by content hash (``<root>/<sha256>``) and written atomically;
the kernel index (kernel id -> sha256, shape, layout, format) is kept beside
them (``<root>/index/<kernel_id>.json``), so a warm germination needs no
network: a validated kernel never changes in Urza, so what it said once stays
true. When the artifacts exceed ``max_bytes`` the least recently used go first.
A file that fails its checksum is deleted and reported as a miss, so the
caller fetches it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KernelRecord:
    """What a loader needs to know about a validated kernel."""

    kernel_id: str
    sha256: str
    input_shape: tuple[int, ...]
    layout: str | None
    blueprint_id: str
    artifact_format: str = ""


class KernelCache:
    """Artifacts under ``root``, at most ``max_bytes`` of them; thread-safe."""

    def __init__(self, root: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_bytes < 1:
            raise ValueError(f"KernelCache max_bytes={max_bytes!r} must be >= 1")
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "index").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, KernelRecord] = {}
        # sha256 -> size, least recently used first (rebuilt from file times on start)
        self._lru: OrderedDict[str, int] = OrderedDict()
        files = [p for p in self.root.iterdir() if p.is_file() and len(p.name) == 64]
        for path in sorted(files, key=lambda p: p.stat().st_mtime):
            self._lru[path.name] = path.stat().st_size

    @property
    def size_bytes(self) -> int:
        return sum(self._lru.values())

    # ------------------------------------------------------------------ index
    def record(self, kernel_id: str) -> KernelRecord | None:
        """The cached index entry of ``kernel_id``, if any."""
        found = self._records.get(kernel_id)
        if found is not None:
            return found
        path = self.root / "index" / f"{kernel_id}.json"
        try:
            raw = json.loads(path.read_text())
            found = KernelRecord(**{**raw, "input_shape": tuple(raw["input_shape"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None
        self._records[kernel_id] = found
        return found

    def remember(self, record: KernelRecord) -> None:
        """Store a kernel's index entry (only validated, hence immutable, kernels belong here)."""
        self._records[record.kernel_id] = record
        _atomic_write(self.root / "index" / f"{record.kernel_id}.json", json.dumps(asdict(record)).encode())

    def forget(self, kernel_id: str) -> None:
        self._records.pop(kernel_id, None)
        (self.root / "index" / f"{kernel_id}.json").unlink(missing_ok=True)

    # ------------------------------------------------------------------ artifacts
    def get(self, sha256: str) -> bytes | None:
        """The artifact's bytes if cached and they hash to ``sha256``; None otherwise (a bad file is deleted)."""
        path = self.root / sha256
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._lru.pop(sha256, None)
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            self.evict(sha256)
            return None
        with self._lock:
            self._lru[sha256] = len(data)
            self._lru.move_to_end(sha256)
        return data

    def put(self, sha256: str, data: bytes) -> None:
        """Cache bytes that hash to ``sha256`` (ValueError otherwise), evicting the least recently used."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"artifact hashes to {actual}, not {sha256}")
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: serve it uncached
        _atomic_write(self.root / sha256, data)
        with self._lock:
            self._lru[sha256] = len(data)
            self._lru.move_to_end(sha256)
            victims = []
            while sum(self._lru.values()) > self.max_bytes and len(self._lru) > 1:
                victim, _ = self._lru.popitem(last=False)
                victims.append(victim)
        for victim in victims:
            (self.root / victim).unlink(missing_ok=True)

    def evict(self, sha256: str) -> None:
        with self._lock:
            self._lru.pop(sha256, None)
        (self.root / sha256).unlink(missing_ok=True)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._lru


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
