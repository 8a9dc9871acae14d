"""``python -m esper.urza.service``: the blueprint and kernel store as a service.

Flags: the common service flags (``esper.service.add_arguments``; port
``ESPER_URZA_PORT``, default 8703), plus ``--database-url``
(``ESPER_URZA_DATABASE_URL``, default SQLite at ``<runs-dir>/urza/urza.db``;
``postgresql+psycopg://...`` in a cluster), ``--blob-dir``
(``ESPER_URZA_BLOB_DIR``, default ``<runs-dir>/urza/blobs``) and
``--max-blob-bytes`` (``ESPER_URZA_MAX_BLOB_BYTES``, default 64 MiB).
Writes need ``ESPER_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from esper.service import add_arguments, configure_logging, serve, settings_from
from esper.urza.app import create_app
from esper.urza.blobs import LocalBlobStore
from esper.urza.db import open_database

SERVICE = "urza"


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m esper.urza.service", description="Esper Urza: blueprint and kernel store."
    )
    add_arguments(p, SERVICE)
    p.add_argument("--database-url", default=env.get("ESPER_URZA_DATABASE_URL"), help="SQLAlchemy URL")
    blob_dir = env.get("ESPER_URZA_BLOB_DIR")
    p.add_argument("--blob-dir", type=Path, default=Path(blob_dir) if blob_dir else None)
    p.add_argument("--max-blob-bytes", type=int, default=int(env.get("ESPER_URZA_MAX_BLOB_BYTES", 64 * 1024 * 1024)))
    return p


async def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_from(args, SERVICE)
    if args.max_blob_bytes < 1:
        raise SystemExit(f"{SERVICE}: --max-blob-bytes must be >= 1 (value {args.max_blob_bytes!r})")
    configure_logging(settings)
    home = settings.runs_dir / "urza"
    url = args.database_url
    if url is None:
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'urza.db'}"
    _, sessions = open_database(url)
    blobs = LocalBlobStore(args.blob_dir or home / "blobs", max_bytes=args.max_blob_bytes)
    app = create_app(sessions, blobs, settings.api_token)
    return await serve(app, host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
