"""The four "your own model" examples: each trains its host static and grown by the heuristic through
Tolaria, and the grown model's export gives the trained model's outputs on the whole test split.

Short runs on a few hundred rows (the accuracy comparison is ``benchmarks/hosts.py``'s job); what is
checked is behaviour: which slot grew which blueprint (per layout), that the static run grew nothing,
and that export is exact.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from esper.kasmina import get_blueprint, wrap


def run_example(name: str, tmp_path: Path, epochs: int, rows: int) -> dict[str, Any]:
    module = importlib.import_module(name)
    result: dict[str, Any] = module.main(
        ["--epochs", str(epochs), "--max-train-samples", str(rows), "--out", str(tmp_path)]
    )
    return result


def first_germination(tmp_path: Path) -> dict[str, Any]:
    report = json.loads((tmp_path / "heuristic" / "report.json").read_text())
    return next(e for e in report["seed_events"] if e["to"] == "GERMINATED")


def check_static_and_export(result: dict[str, Any]) -> None:
    static, grown = result["none"], result["heuristic"]
    assert static["params_final"] == static["params_initial"] and static["fossilized"] == []
    assert grown["params_initial"] == static["params_initial"]
    for row in (static, grown):
        assert row["export_max_diff"] <= 1e-5
        assert row["export_test"] == pytest.approx(row["model_test"], abs=1e-9)


def test_mlp_on_tabular_data_grows_an_mlp_seed_at_a_vector_slot(tmp_path: Path) -> None:
    result = run_example("your_own_mlp", tmp_path, epochs=4, rows=200)
    check_static_and_export(result)
    event = first_germination(tmp_path)
    assert (event["slot"], event["blueprint"]) == ("s1", "mlp")
    assert result["heuristic"]["params_final"] > result["heuristic"]["params_initial"]


def test_cnn_on_digit_images_grows_a_conv_seed(tmp_path: Path) -> None:
    result = run_example("your_own_cnn", tmp_path, epochs=3, rows=200)
    check_static_and_export(result)
    event = first_germination(tmp_path)
    assert (event["slot"], event["blueprint"]) == ("s1", "conv_heavy")


def test_gru_slots_are_a_sequence_and_a_vector_and_grow_attention_then_dense_seeds(tmp_path: Path) -> None:
    import torch
    import your_own_gru

    model = wrap(your_own_gru.make_model(), {"seq": "embed_act", "vec": "proj_act"})
    model.probe(torch.zeros(2, 8, 8))
    assert {sid: s.layer_kind for sid, s in model.slots.items()} == {"seq": "sequence", "vec": "linear"}
    result = run_example("your_own_gru", tmp_path, epochs=4, rows=200)
    check_static_and_export(result)
    event = first_germination(tmp_path)
    assert (event["slot"], event["blueprint"]) == ("seq", "attention")
    report = json.loads((tmp_path / "heuristic" / "report.json").read_text())
    shapes = {"seq": ((8, 16), "sequence"), "vec": ((32,), "linear")}
    live: dict[str, str] = {}
    for e in report["seed_events"]:
        if e["to"] == "GERMINATED":
            assert e["blueprint"] in {"seq": {"attention", "mlp", "lowrank"}, "vec": {"mlp", "lowrank"}}[e["slot"]]
            live[e["slot"]] = e["blueprint"]
        elif e["to"] == "CULLED":
            live.pop(e["slot"])
    added = sum(get_blueprint(b).param_count(shapes[s][0], layer_kind=shapes[s][1]) for s, b in live.items())
    assert result["heuristic"]["params_final"] - result["heuristic"]["params_initial"] == added


def test_mnist1d_conv_host_as_a_user_task_grows_as_the_builtin_does(tmp_path: Path) -> None:
    result = run_example("your_own_mnist1d", tmp_path, epochs=3, rows=300)
    check_static_and_export(result)
    event = first_germination(tmp_path)
    assert (event["slot"], event["blueprint"]) == ("s1", "conv_heavy")
