"""User-task tests: one torch thread (tiny models on a shared CPU run faster without thread hand-offs),
and the examples folder and this folder importable, as a user's own modules are."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"
if str(HERE) not in sys.path:  # the test modules import usertask_fixtures at collection time
    sys.path.insert(0, str(HERE))


@pytest.fixture(autouse=True)
def one_thread_and_user_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(HERE))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
