"""``python tests/tolaria_service/crashpoint.py <service flags>``: the Tolaria service process, killed at one spot.

``ESPER_TEST_CRASH`` = ``<point>:<command_id>`` makes the process SIGKILL itself at the
first checkpoint of a boundary that applied ``command_id``:

* ``before-checkpoint``: the command is applied (its result produced), the checkpoint not yet written;
* ``after-checkpoint``: the checkpoint holding the command is written, nothing after it has run.

Nothing in the service knows about this: the script wraps :meth:`RunFolder.checkpoint`, the one call
every boundary commits through, and then runs the service's own ``main``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from esper.tolaria.runs import RunFolder
from esper.tolaria.service.__main__ import main

POINTS = ("before-checkpoint", "after-checkpoint")


def install(spec: str) -> None:
    point, _, command_id = spec.partition(":")
    if point not in POINTS or not command_id:
        raise SystemExit(f"ESPER_TEST_CRASH: expected '<{'|'.join(POINTS)}>:<command_id>', got {spec!r}")
    real = RunFolder.checkpoint

    def checkpoint(self: RunFolder) -> Path:
        hit = command_id in self.trainer.applied_commands
        if hit and point == "before-checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        path = real(self)
        if hit and point == "after-checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    RunFolder.checkpoint = checkpoint  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ["ESPER_TEST_CRASH"])
    sys.exit(asyncio.run(main()))
