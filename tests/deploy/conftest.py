"""tests/deploy: the deployment files (compose, chart, dashboards, Dockerfiles) checked offline.

The helpers under ``deploy/ci`` are scripts, not a package: this puts them on the path. Tools
that come from outside PyPI's wheels here (helm, promtool) are found where ``make deploy-check``
puts them; without one a test is skipped on a developer machine and fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(DEPLOY / "ci"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # acl_redis


def _missing(tool: str, how: str) -> None:
    message = f"{tool} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    path = Path(sys.executable).parent.parent / "esper-tools" / "helm"
    if not path.exists():
        _missing("helm", "make deploy-check installs it into .venv/esper-tools")
    return str(path)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _missing("promtool", "apt-get install prometheus")
    return str(path)
