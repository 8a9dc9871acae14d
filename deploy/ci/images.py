"""The service images for ``make compose-test``: build each from its Dockerfile, then check what they carry."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from harness import ROOT, Shell, StepFailed

#: Services with an image (services/<name>/Dockerfile), each tagged esper/<name>:dev.
SERVICES = ("tamiyo", "tolaria", "nissa", "urza", "tezzeret")
#: Images built on torch (they share its layers, so they build one after the other).
TORCH_IMAGES = ("tolaria", "tezzeret")
#: Images that must not carry torch (the controller, the telemetry sink, the store).
TORCH_FREE = ("tamiyo", "nissa", "urza")
WHEELS = ROOT / "deploy" / "docker" / "wheels"
TAG = "dev"


def torch_wheel(pip: Path) -> Path | None:
    """This machine's torch CPU wheel in pip's find-links folders, so images build without a torch index."""
    folders = [f for f in os.environ.get("PIP_FIND_LINKS", "").split() if f]
    done = subprocess.run([str(pip), "config", "list"], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if "find-links" in line:
            folders += line.split("=", 1)[1].strip().strip("'\"").split()
    for folder in folders:
        if Path(folder).is_dir():
            for wheel in sorted(Path(folder).glob("torch-2.13.0+cpu-cp311-*.whl")):
                return wheel
    return None


class Images:
    """Builds esper/<service>:dev for every service and checks user and torch in each."""

    def __init__(self, shell: Shell, docker: str, pip: Path) -> None:
        self.shell, self.docker, self.pip = shell, docker, pip
        self.links: list[Path] = []
        self.stopping = False

    def build(self, step: Callable[[str], AbstractContextManager[Callable[[str], None]]]) -> None:
        """``step(name)`` is the timeline's step context (one per image)."""
        wheel = torch_wheel(self.pip)
        args: list[str] = []
        step_note = ""
        if wheel is not None:
            link = WHEELS / wheel.name
            if not link.exists():
                try:
                    os.link(wheel, link)
                except OSError:
                    shutil.copy(wheel, link)
                self.links.append(link)
            args = ["--build-arg", "TORCH_INDEX_URL="]  # the wheel above; no torch index needed
            step_note = f"torch from {wheel}"
        else:
            step_note = "torch from the Dockerfile's TORCH_INDEX_URL"

        def build_one(svc: str) -> None:
            with step(f"image esper/{svc}") as note:
                self.shell.run(
                    [
                        self.docker,
                        "build",
                        "--network",
                        "host",
                        *args,
                        "-f",
                        f"services/{svc}/Dockerfile",
                        "-t",
                        f"esper/{svc}:{TAG}",
                        ".",
                    ],
                    log_name=f"build-{svc}",
                    env_extra={"DOCKER_BUILDKIT": "1"},
                )
                size = self.shell.output(
                    [self.docker, "image", "inspect", "--format", "{{.Size}}", f"esper/{svc}:{TAG}"]
                )
                note(f"{int(size) / 1e6:.0f} MB" + (f" ({step_note})" if svc == "tolaria" else ""))

        def lane(services: tuple[str, ...]) -> None:
            for svc in services:
                if self.stopping:
                    return
                build_one(svc)

        # Two lanes side by side (downloads overlap with installs): the torch images one after the
        # other, so the second reuses the first's torch layers, and the light ones beside them.
        torch_lane = tuple(s for s in SERVICES if s in TORCH_IMAGES)
        light_lane = tuple(s for s in SERVICES if s not in TORCH_IMAGES)
        pool = ThreadPoolExecutor(max_workers=2)
        try:
            for future in [pool.submit(lane, torch_lane), pool.submit(lane, light_lane)]:
                future.result()
        except BaseException:
            # The other lane's build would otherwise run on (an interrupt waits for no build).
            self.stopping = True
            pool.shutdown(wait=False, cancel_futures=True)
            self.shell.stop_running()
            raise
        finally:
            pool.shutdown(wait=True)
            self.remove_links()

    def remove_links(self) -> None:
        for link in self.links:
            link.unlink(missing_ok=True)
        self.links.clear()

    def check(self) -> list[str]:
        """Every image runs as non-root; Tolaria has torch; the torch-free ones have none. Returns notes."""
        torch: dict[str, bool] = {}
        for svc in SERVICES:
            probe = "import os, importlib.util as u; print(os.getuid(), u.find_spec('torch') is not None)"
            out = self.shell.output(
                [
                    self.docker,
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--entrypoint",
                    "python",
                    f"esper/{svc}:{TAG}",
                    "-c",
                    probe,
                ]
            )
            uid, has_torch = out.split()
            if uid == "0":
                raise StepFailed(f"esper/{svc}:{TAG} runs as root")
            torch[svc] = has_torch == "True"
            if svc in TORCH_FREE:  # the import itself must fail, not only the lookup
                done = subprocess.run(
                    [
                        self.docker,
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        "--entrypoint",
                        "python",
                        f"esper/{svc}:{TAG}",
                        "-c",
                        "import torch",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=min(60.0, self.shell.remaining()),
                    check=False,
                )
                if done.returncode == 0 or "ModuleNotFoundError" not in done.stderr:
                    raise StepFailed(f"esper/{svc}:{TAG}: `import torch` did not fail: {done.stderr[-300:]}")
        if not torch["tolaria"]:
            raise StepFailed(f"esper/tolaria:{TAG} has no torch")
        return [f"`import torch` fails in {', '.join(TORCH_FREE)}", "every image runs as a non-root user"]
