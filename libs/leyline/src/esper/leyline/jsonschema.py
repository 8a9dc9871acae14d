"""Export the wire contract as JSON Schema files for clients in any language.

``python -m esper.leyline.jsonschema DIR`` writes ``envelope.schema.json`` and one
``<message_type>.schema.json`` per message type into DIR; ``--check`` compares
instead of writing and exits 1 listing every file that differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from esper.leyline.envelope import ENVELOPE_KEYS, WireEnvelope
from esper.leyline.message import MESSAGE_TYPES
from esper.leyline.version import SCHEMA_VERSION

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _inline_root(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """msgspec returns ``{"$ref": ..., "$defs": ...}``; hoist the root definition."""
    defs = dict(schema.get("$defs", {}))
    root = defs.pop(name)
    out: dict[str, Any] = {"$schema": _DIALECT, **root}
    if defs:
        out["$defs"] = defs
    return out


def envelope_schema() -> dict[str, Any]:
    schema = _inline_root(msgspec.json.schema(WireEnvelope), WireEnvelope.__name__)
    schema["$id"] = "envelope.schema.json"
    schema["title"] = "Esper envelope"
    schema["description"] = (
        f"A Leyline envelope, schema version {SCHEMA_VERSION}. A stream entry's field 'm' holds it, "
        "msgpack-encoded. 'payload' follows '<message_type>.schema.json'."
    )
    props = schema["properties"]
    props["message_type"]["enum"] = sorted(MESSAGE_TYPES)
    props["schema_version"]["pattern"] = r"^\d+\.\d+$"
    schema["required"] = list(ENVELOPE_KEYS)
    return schema


def message_schema(message_type: str) -> dict[str, Any]:
    model = MESSAGE_TYPES[message_type]
    schema = _inline_root(msgspec.json.schema(model), model.__name__)
    schema["$id"] = f"{message_type}.schema.json"
    schema["title"] = model.__name__
    return schema


def render() -> dict[str, str]:
    """File name -> file text for every schema."""
    files = {"envelope.schema.json": envelope_schema()}
    files.update({f"{name}.schema.json": message_schema(name) for name in sorted(MESSAGE_TYPES)})
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in files.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="compare with DIR instead of writing")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = [
            n
            for n, text in files.items()
            if not (args.directory / n).is_file() or (args.directory / n).read_text() != text
        ]
        extra = [p.name for p in args.directory.glob("*.schema.json") if p.name not in files]
        for name in stale:
            print(f"proto/{name} is out of date with Leyline; run 'make proto'", file=sys.stderr)
        for name in extra:
            print(f"proto/{name} names no Leyline message; run 'make proto'", file=sys.stderr)
        return 1 if stale or extra else 0
    args.directory.mkdir(parents=True, exist_ok=True)
    for old in args.directory.glob("*.schema.json"):
        if old.name not in files:
            old.unlink()
    for name, text in files.items():
        (args.directory / name).write_text(text)
    print(f"wrote {len(files)} schemas to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
