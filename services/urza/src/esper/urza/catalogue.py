"""The built-in blueprint catalogue, config schemas, and resolving a request's config against a blueprint.

Urza has no torch, so it cannot ask Kasmina's registry: ``catalogue.json``
states the built-in blueprints (the test suite checks it against Kasmina's
registry). Configs are resolved the way Kasmina resolves them: the blueprint's
defaults overlaid by the request, every key known and of its default's type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from esper.urza.db import BlueprintRow

ConfigValue = int | float | str | bool


def builtin_catalogue() -> list[dict[str, Any]]:
    """The built-in blueprints as stored in ``catalogue.json``."""
    text = resources.files("esper.urza").joinpath("catalogue.json").read_text()
    entries: list[dict[str, Any]] = json.loads(text)
    return entries


def _json_type(value: ConfigValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def config_schema(default_config: Mapping[str, ConfigValue]) -> dict[str, Any]:
    """A JSON Schema for a config with these defaults: each key typed like its default, no other keys."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: {"type": _json_type(v), "default": v} for k, v in sorted(default_config.items())},
    }


def resolve_config(row: BlueprintRow, config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """Defaults overlaid by ``config``; ValueError naming ``config.<key>`` and the value that does not fit."""
    defaults: dict[str, ConfigValue] = dict(row.default_config)
    merged = dict(defaults)
    for key, value in config.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"config.{key}: blueprint {row.blueprint_id!r} has no such key (known: {known})")
        default = defaults[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int)
        elif isinstance(default, float):
            ok = isinstance(value, int | float)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"config.{key}: value {value!r} must be {type(default).__name__} like its default")
        merged[key] = float(value) if isinstance(default, float) else value
    return merged


def register_builtins(session: Session) -> int:
    """Insert the built-in blueprints that are not stored yet; returns how many were added."""
    added = 0
    for entry in builtin_catalogue():
        exists = session.scalar(
            select(BlueprintRow.id).where(
                BlueprintRow.blueprint_id == entry["blueprint_id"], BlueprintRow.version == entry["version"]
            )
        )
        if exists is not None:
            continue
        session.add(
            BlueprintRow(
                blueprint_id=entry["blueprint_id"],
                version=entry["version"],
                family=entry["family"],
                description=entry["description"],
                layer_kinds=entry["layer_kinds"],
                default_config=entry["default_config"],
                config_schema=config_schema(entry["default_config"]),
                builtin=True,
            )
        )
        added += 1
    session.commit()
    return added
