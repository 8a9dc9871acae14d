"""Content-addressed blobs: the sha256 is checked on upload and on every read; a bad blob is never served."""

from __future__ import annotations

import hashlib

import pytest
from conftest import AUTH

from esper.urza.blobs import ChecksumMismatch, LocalBlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_upload_that_does_not_hash_to_its_name_is_refused(client, blobs):
    response = client.put(f"/blobs/{sha(b'good')}", content=b"evil", headers=AUTH)
    assert response.status_code == 422 and "sha256 mismatch" in response.json()["reason"]
    assert not blobs.exists(sha(b"good"))
    assert 'esper_urza_blob_checksum_failures_total{where="upload"} 1.0' in client.get("/metrics").text


def test_uploads_are_size_limited(client, blobs):
    big = b"x" * (blobs.max_bytes + 1)
    assert client.put(f"/blobs/{sha(big)}", content=big, headers=AUTH).status_code == 413


def test_names_are_hashes_never_client_paths(client):
    assert client.put("/blobs/..%2F..%2Fetc%2Fpasswd", content=b"x", headers=AUTH).status_code in (404, 422)
    assert client.get("/blobs/" + "A" * 64).status_code == 422


def test_a_blob_corrupted_at_rest_is_never_served_and_can_be_uploaded_again(client, blobs):
    data = b"artifact" * 100
    name = sha(data)
    assert client.put(f"/blobs/{name}", content=data, headers=AUTH).status_code == 201
    path = blobs.root / name[:2] / name
    path.write_bytes(data[:-1] + b"!")  # bit rot
    response = client.get(f"/blobs/{name}")
    assert response.status_code == 500 and "failed its checksum" in response.json()["reason"]
    assert data[:-1] not in response.content
    assert client.get(f"/blobs/{name}").status_code == 404  # withdrawn, not served on a retry either
    assert client.put(f"/blobs/{name}", content=data, headers=AUTH).status_code == 201
    assert client.get(f"/blobs/{name}").content == data
    metrics = client.get("/metrics").text
    assert 'esper_urza_blob_checksum_failures_total{where="read"} 1.0' in metrics
    assert "esper_urza_blob_uploads_total 2.0" in metrics


def test_the_local_store_verifies_every_read(tmp_path):
    store = LocalBlobStore(tmp_path)
    name = store.put(b"abc", sha(b"abc"))
    assert store.get(name) == b"abc"
    (tmp_path / name[:2] / name).write_bytes(b"abd")
    with pytest.raises(ChecksumMismatch):
        store.get(name)
    assert list((tmp_path / "quarantine").iterdir())
