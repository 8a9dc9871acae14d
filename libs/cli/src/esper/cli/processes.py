"""Process helpers shared by the stack supervisor and the private Redis."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Resolved once in the parent: the child runs die_with_parent between fork and exec,
# where it must not import or allocate.
_prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM if the process that started it dies (Linux).

    A supervisor killed with SIGKILL cannot stop its children; this way they
    still go. Elsewhere it does nothing (the supervisor's own shutdown still stops them).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def pid_exists(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True
