"""Tezzeret's client of Urza's HTTP API: register kernels, report on them, upload artifacts."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx


class UrzaUnavailable(ConnectionError):
    """Urza did not answer, or answered with a server error: the work is retried later, never dropped."""


class UrzaRejected(ValueError):
    """Urza refused the request as invalid (4xx): retrying cannot help."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Urza answered {status}: {reason}")
        self.status = status
        self.reason = reason


class UrzaClient:
    """Urza at ``base_url``; writes carry ``token``."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise UrzaUnavailable(f"Urza unreachable ({method} {path}): {exc}") from None
        if response.status_code >= 500:
            raise UrzaUnavailable(f"Urza answered {response.status_code} to {method} {path}: {response.text[:200]}")
        if response.status_code >= 400:
            try:
                reason = response.json().get("reason", response.text)
            except ValueError:
                reason = response.text
            raise UrzaRejected(response.status_code, str(reason)[:2000])
        return response.json()

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """The kernel for this blueprint/config/shape/layout/dtype/target (registered now or before)."""
        result: dict[str, Any] = self._call("POST", "/kernels", json=body)
        return result

    def kernel(self, kernel_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/kernels/{kernel_id}")
        return result

    def report(self, kernel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", f"/kernels/{kernel_id}", json=body)
        return result

    def upload(self, data: bytes) -> str:
        """Store ``data`` under its sha256 (Urza re-hashes it); returns the hash."""
        sha = hashlib.sha256(data).hexdigest()
        self._call("PUT", f"/blobs/{sha}", content=data, headers={"Content-Type": "application/octet-stream"})
        return sha

    def ping(self) -> None:
        self._call("GET", "/healthz")

    def close(self) -> None:
        self.http.close()
