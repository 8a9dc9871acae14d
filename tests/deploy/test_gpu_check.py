"""deploy/gpu: the GPU check and the wheels it installs on a machine that reaches no index.

The check itself needs a GPU (or ``DEVICE=cpu`` and minutes); here, what can drift without one running:
every wheel it needs is pinned, and the scripts parse.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "deploy" / "gpu"


def _names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_wheel_the_check_installs_is_pinned_in_the_constraints():
    pinned = {
        _canonical(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    }
    names = _names((GPU / "wheels.txt").read_text())
    assert names and [n for n in names if _canonical(n) not in pinned] == []


def test_the_wheels_cover_what_esper_needs_beyond_the_gpu_image():
    # the check's own test of whether to install them names these; each must come from a wheel
    script = (GPU / "check.sh").read_text()
    probe = re.search(r'-c "import ([a-z0-9_, ]+)"', script)
    assert probe is not None
    wheels = {_canonical(n) for n in _names((GPU / "wheels.txt").read_text())}
    assert {_canonical(m) for m in probe.group(1).split(", ")} <= wheels


def test_the_scripts_parse():
    for script in ("check.sh", "fetch_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
