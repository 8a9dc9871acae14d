"""Where kernels come from: :class:`KernelSource`, and :class:`UrzaSource` (Urza's HTTP API, stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Protocol

from esper.kasmina.kernels.cache import KernelRecord


class SourceUnavailable(ConnectionError):
    """The store did not answer (down, unreachable, timed out, or a server error)."""


class KernelNotFound(LookupError):
    """The store has no such kernel, or no artifact for it."""


class KernelNotValidated(LookupError):
    """The kernel exists but is not validated (still compiling, or failed)."""


class KernelSource(Protocol):
    def record(self, kernel_id: str) -> KernelRecord:
        """The validated kernel's record (KernelNotFound, KernelNotValidated, SourceUnavailable)."""

    def artifact(self, kernel_id: str) -> bytes:
        """The kernel's artifact bytes, as the store sends them (the caller verifies them)."""


class UrzaSource:
    """Urza at ``base_url`` (``http://127.0.0.1:8703``); ``timeout_s`` bounds each request."""

    def __init__(self, base_url: str, timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=self.timeout_s) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise KernelNotFound(f"Urza has no {path}") from None
            raise SourceUnavailable(f"Urza answered {exc.code} to GET {path}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SourceUnavailable(f"Urza at {self.base_url} unreachable: {exc}") from None

    def record(self, kernel_id: str) -> KernelRecord:
        body = json.loads(self._get(f"/kernels/{kernel_id}"))
        if body.get("status") != "validated" or not body.get("sha256"):
            raise KernelNotValidated(
                f"kernel {kernel_id} is {body.get('status')!r}: {body.get('error') or 'no artifact'}"
            )
        return KernelRecord(
            kernel_id=kernel_id,
            sha256=body["sha256"],
            input_shape=tuple(body["input_shape"]),
            layout=body.get("layout"),
            blueprint_id=body["blueprint_id"],
            artifact_format=body.get("artifact_format") or "",
        )

    def artifact(self, kernel_id: str) -> bytes:
        return self._get(f"/kernels/{kernel_id}/artifact")
