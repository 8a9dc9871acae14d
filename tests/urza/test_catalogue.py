"""Urza's built-in catalogue states exactly Kasmina's registered blueprints (Urza itself has no torch)."""

from __future__ import annotations

from esper.kasmina.blueprints import get_blueprint, list_blueprints
from esper.urza.catalogue import builtin_catalogue


def test_the_catalogue_matches_kasminas_registry():
    catalogue = {e["blueprint_id"]: e for e in builtin_catalogue()}
    assert sorted(catalogue) == list_blueprints()
    for name, entry in catalogue.items():
        spec = get_blueprint(name)
        assert tuple(entry["layer_kinds"]) == spec.layer_kinds, name
        assert entry["default_config"] == spec.default_config, name
        assert entry["description"] == spec.description, name
