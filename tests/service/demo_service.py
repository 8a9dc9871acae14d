"""A minimal service on esper.service, run as a subprocess by the runtime tests."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fastapi import FastAPI

from esper.service import health_router, serve

state = {"ready": False}


async def main(port: int, marker: Path, fail: bool) -> int:
    app = FastAPI()
    app.include_router(health_router(lambda: None if state["ready"] else "warming up"))

    async def loop() -> None:
        state["ready"] = True
        if fail:
            raise RuntimeError("loop broke")
        await asyncio.Event().wait()

    async def on_shutdown() -> None:
        marker.write_text("clean")

    return await serve(app, host="127.0.0.1", port=port, loops=[loop()], on_shutdown=on_shutdown)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "fail")))
