"""Content-addressed artifact blobs: stored and served by their sha256, verified both ways.

:class:`BlobStore` is what Urza needs from a store; :class:`LocalBlobStore`
keeps blobs in a directory (``<root>/<aa>/<sha256>``). An S3-compatible store
implements the same four methods (``put`` as a PUT with the object key being
the hash, ``get`` as a GET whose body is re-hashed before it is returned).
Names are always the hash the server computed, never a path a client chose.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

SHA256_PATTERN = r"^[0-9a-f]{64}$"
_SHA256 = re.compile(SHA256_PATTERN)


class BlobError(Exception):
    """Base class of blob store errors."""


class BlobNotFound(BlobError):
    """No blob with this hash is stored."""


class ChecksumMismatch(BlobError):
    """Bytes do not hash to the sha256 they were stored or offered under."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, the bytes hash to {actual}")
        self.expected = expected
        self.actual = actual


class BlobTooLarge(BlobError):
    """An upload over the store's size limit."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(value: str) -> str:
    """``value`` if it is 64 lowercase hex digits; ValueError naming it otherwise."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"sha256 {value!r} must be 64 lowercase hex digits")
    return value


class BlobStore(Protocol):
    """Where artifacts live. Every method verifies what it moves."""

    max_bytes: int

    def put(self, data: bytes, sha256: str) -> str:
        """Store ``data`` if it hashes to ``sha256`` (ChecksumMismatch, BlobTooLarge otherwise); idempotent."""

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, re-hashed before they are returned (ChecksumMismatch, BlobNotFound)."""

    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under ``sha256`` (not verified: ``get`` verifies)."""

    def size(self, sha256: str) -> int:
        """Stored size in bytes (BlobNotFound)."""


class LocalBlobStore:
    """Blobs as files under ``root``, written atomically (temp file, fsync, rename).

    A blob that fails its checksum on read is moved to ``root/quarantine`` so
    it is never served again and a fresh upload of the right bytes replaces it.
    """

    def __init__(self, root: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes!r} must be >= 1")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str) -> str:
        path = self._path(sha256)
        if len(data) > self.max_bytes:
            raise BlobTooLarge(f"blob of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        actual = sha256_hex(data)
        if actual != sha256:
            raise ChecksumMismatch(sha256, actual)
        if path.exists():
            try:
                self.get(sha256)
                return sha256
            except ChecksumMismatch:
                pass  # quarantined by get(); write the good bytes below
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256

    def get(self, sha256: str) -> bytes:
        path = self._path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None
        actual = sha256_hex(data)
        if actual != sha256:
            quarantine = self.root / "quarantine"
            quarantine.mkdir(exist_ok=True)
            os.replace(path, quarantine / f"{sha256}.{actual[:12]}")
            raise ChecksumMismatch(sha256, actual)
        return data

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None
