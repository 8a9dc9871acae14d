"""Urza's HTTP API over SQLite and PostgreSQL: blueprints, kernels, auth, validation, 404s."""

from __future__ import annotations

import hashlib

from conftest import AUTH

from esper.leyline.compile import kernel_id_for
from esper.urza.catalogue import builtin_catalogue

NEW_BLUEPRINT = {
    "blueprint_id": "wide_mlp",
    "family": "dense",
    "description": "an MLP four times wider",
    "layer_kinds": ["linear"],
    "default_config": {"expansion": 4.0},
}


def test_the_builtin_catalogue_is_registered_at_start_and_filterable_by_family(client):
    everything = client.get("/blueprints").json()
    assert everything["total"] == len(builtin_catalogue())
    names = {b["blueprint_id"] for b in everything["items"]}
    assert {"conv_light", "mlp", "lowrank", "norm", "se_attention"} <= names
    conv = client.get("/blueprints", params={"family": "conv"}).json()
    assert {b["family"] for b in conv["items"]} == {"conv"} and conv["total"] == 4
    mlp = client.get("/blueprints/mlp").json()
    assert mlp["builtin"] and mlp["config_schema"]["properties"]["expansion"]["type"] == "number"


def test_listing_is_paginated(client):
    first = client.get("/blueprints", params={"limit": 3}).json()
    second = client.get("/blueprints", params={"limit": 3, "offset": 3}).json()
    assert len(first["items"]) == 3 and len(second["items"]) == 3
    assert not {b["blueprint_id"] for b in first["items"]} & {b["blueprint_id"] for b in second["items"]}


def test_writes_need_the_bearer_token(client):
    assert client.post("/blueprints", json=NEW_BLUEPRINT).status_code == 401
    assert client.post("/blueprints", json=NEW_BLUEPRINT, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [8]}).status_code == 401
    assert client.put("/blobs/" + "0" * 64, content=b"x").status_code == 401


def test_a_new_blueprint_gets_the_next_version_and_each_version_stays_readable(client):
    first = client.post("/blueprints", json=NEW_BLUEPRINT, headers=AUTH)
    assert first.status_code == 201 and first.json()["version"] == 1
    second = client.post("/blueprints", json={**NEW_BLUEPRINT, "description": "v2"}, headers=AUTH)
    assert second.json()["version"] == 2
    assert client.get("/blueprints/wide_mlp").json()["description"] == "v2"
    assert client.get("/blueprints/wide_mlp/versions/1").json()["description"] == "an MLP four times wider"
    again = client.post("/blueprints", json={**NEW_BLUEPRINT, "version": 2}, headers=AUTH)
    assert again.status_code == 409 and "version 2 exists" in again.json()["reason"]


def test_unknown_ids_are_404(client):
    assert client.get("/blueprints/nothing_here").status_code == 404
    assert client.get("/blueprints/mlp/versions/7").status_code == 404
    assert client.get("/kernels/k" + "0" * 40).status_code == 404
    assert client.get("/kernels/k" + "0" * 40 + "/artifact").status_code == 404
    assert client.get("/blobs/" + "a" * 64).status_code == 404


def test_bad_input_is_422_naming_the_field_and_value(client):
    shape = client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [0]}, headers=AUTH)
    assert (
        shape.status_code == 422 and "input_shape.0" in shape.json()["reason"] and "value 0" in shape.json()["reason"]
    )
    key = client.post(
        "/kernels", json={"blueprint_id": "mlp", "input_shape": [8], "config": {"width": 3}}, headers=AUTH
    )
    assert key.status_code == 422 and "config.width" in key.json()["reason"]
    typed = client.post(
        "/kernels",
        json={"blueprint_id": "conv_light", "input_shape": [4, 8], "config": {"kernel_size": "3"}},
        headers=AUTH,
    )
    assert typed.status_code == 422 and "config.kernel_size" in typed.json()["reason"]
    unknown = client.post("/kernels", json={"blueprint_id": "nope", "input_shape": [8]}, headers=AUTH)
    assert unknown.status_code == 422 and "blueprint_id" in unknown.json()["reason"]
    layout = client.post(
        "/kernels", json={"blueprint_id": "mlp", "input_shape": [4, 8], "layout": "conv1d"}, headers=AUTH
    )
    assert layout.status_code == 422 and "layout" in layout.json()["reason"]
    rank = client.post("/kernels", json={"blueprint_id": "conv_light", "input_shape": [8]}, headers=AUTH)
    assert rank.status_code == 422 and "input_shape" in rank.json()["reason"]
    nul = client.post("/blueprints", json={**NEW_BLUEPRINT, "description": "a\x00b"}, headers=AUTH)
    assert nul.status_code == 422 and "description" in nul.json()["reason"]  # PostgreSQL cannot store NUL
    assert client.get("/blueprints", params={"family": "\x00"}).status_code == 422
    family = client.post("/blueprints", json={**NEW_BLUEPRINT, "layer_kinds": ["lstm"]}, headers=AUTH)
    assert family.status_code == 422 and "layer_kinds.0" in family.json()["reason"]


def test_registering_a_kernel_twice_finds_one_kernel_whose_id_is_the_leyline_identity(client):
    first = client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [32]}, headers=AUTH)
    spelled = client.post(
        "/kernels", json={"blueprint_id": "mlp", "input_shape": [32], "config": {"expansion": 2}}, headers=AUTH
    )
    assert (first.status_code, spelled.status_code) == (201, 200)
    kernel = first.json()
    assert spelled.json()["kernel_id"] == kernel["kernel_id"]
    assert kernel["kernel_id"] == kernel_id_for("mlp", [32], {"expansion": 2.0}, layout="linear")
    assert kernel["status"] == "requested" and kernel["layout"] == "linear"
    assert client.get("/kernels").json()["total"] == 1


def test_kernels_are_searchable_by_blueprint_and_shape(client):
    for body in (
        {"blueprint_id": "mlp", "input_shape": [32]},
        {"blueprint_id": "mlp", "input_shape": [16]},
        {"blueprint_id": "norm", "input_shape": [16, 40], "layout": "conv1d"},
        {"blueprint_id": "norm", "input_shape": [16, 40], "layout": "sequence"},
    ):
        assert client.post("/kernels", json=body, headers=AUTH).status_code == 201
    assert client.get("/kernels", params={"blueprint_id": "mlp"}).json()["total"] == 2
    shaped = client.get("/kernels", params={"input_shape": "16x40"}).json()
    assert {k["layout"] for k in shaped["items"]} == {"conv1d", "sequence"}
    one = client.get("/kernels", params={"blueprint_id": "mlp", "input_shape": "16"}).json()
    assert [k["input_shape"] for k in one["items"]] == [[16]]


def test_a_validated_kernel_carries_its_verified_artifact_and_measurements_and_then_is_final(client):
    kernel_id = client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [8]}, headers=AUTH).json()[
        "kernel_id"
    ]
    artifact = b"compiled kernel bytes" * 10
    sha = hashlib.sha256(artifact).hexdigest()
    no_blob = client.patch(f"/kernels/{kernel_id}", json={"status": "validated", "sha256": sha}, headers=AUTH)
    assert no_blob.status_code == 422 and "sha256" in no_blob.json()["reason"]
    assert client.put(f"/blobs/{sha}", content=artifact, headers=AUTH).status_code == 201
    assert client.patch(f"/kernels/{kernel_id}", json={"status": "compiling"}, headers=AUTH).json()["status"] == (
        "compiling"
    )
    report = {"status": "validated", "sha256": sha, "latency_us": 12.5, "backward_latency_us": 30.0, "params": 144}
    done = client.patch(f"/kernels/{kernel_id}", json=report, headers=AUTH).json()
    assert (done["status"], done["size_bytes"], done["params"], done["latency_us"]) == (
        "validated",
        len(artifact),
        144,
        12.5,
    )
    assert client.get(f"/kernels/{kernel_id}/artifact").content == artifact
    assert client.patch(f"/kernels/{kernel_id}", json=report, headers=AUTH).status_code == 200  # the same again
    change = client.patch(f"/kernels/{kernel_id}", json={"status": "failed", "error": "x"}, headers=AUTH)
    assert change.status_code == 409


def test_measurements_reported_after_validation_are_added_once_and_the_artifact_never_changes(client):
    kernel_id = client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [6]}, headers=AUTH).json()[
        "kernel_id"
    ]
    artifact = b"another compiled kernel" * 10
    sha = hashlib.sha256(artifact).hexdigest()
    assert client.put(f"/blobs/{sha}", content=artifact, headers=AUTH).status_code == 201
    validated = {"status": "validated", "sha256": sha, "params": 84, "max_abs_error": 0.0}
    first = client.patch(f"/kernels/{kernel_id}", json=validated, headers=AUTH).json()
    assert (first["status"], first["latency_us"], first["memory_bytes"]) == ("validated", None, None)
    timed = {**validated, "latency_us": 40.0, "backward_latency_us": 90.0, "memory_bytes": 4096, "params": 1}
    added = client.patch(f"/kernels/{kernel_id}", json=timed, headers=AUTH).json()
    assert (added["latency_us"], added["backward_latency_us"], added["memory_bytes"]) == (40.0, 90.0, 4096)
    assert added["params"] == 84  # what was recorded stays
    again = client.patch(f"/kernels/{kernel_id}", json={**timed, "latency_us": 1.0}, headers=AUTH).json()
    assert again["latency_us"] == 40.0 and client.get(f"/kernels/{kernel_id}").json()["latency_us"] == 40.0
    other = client.patch(f"/kernels/{kernel_id}", json={**timed, "sha256": "0" * 64}, headers=AUTH)
    assert other.status_code == 409


def test_a_failed_kernel_says_why(client):
    kernel_id = client.post("/kernels", json={"blueprint_id": "mlp", "input_shape": [8]}, headers=AUTH).json()[
        "kernel_id"
    ]
    silent = client.patch(f"/kernels/{kernel_id}", json={"status": "failed"}, headers=AUTH)
    assert silent.status_code == 422 and "error" in silent.json()["reason"]
    failed = client.patch(f"/kernels/{kernel_id}", json={"status": "failed", "error": "export: boom"}, headers=AUTH)
    assert failed.json()["error"] == "export: boom"
    assert client.get(f"/kernels/{kernel_id}/artifact").status_code == 404
    assert client.get("/kernels", params={"status": "failed"}).json()["total"] == 1


def test_health_routes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 200
