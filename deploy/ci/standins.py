"""Local stand-ins for the upstream images the compose file names, for machines with no registry.

A minimal Debian bookworm made with ``debootstrap`` is imported as ``esper-standin/debian:bookworm``;
each stand-in (``deploy/standins/*.Dockerfile``) is built on it and tagged with the upstream name
(``python:3.11-slim-bookworm``, ``redis:7.0``, ...), so ``deploy/docker-compose.yml`` stays the file
users run. A tag that exists and is not one of ours is a real upstream image and is used as is;
ours are rebuilt from the layer cache (about a second) so a changed Dockerfile takes effect.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE_TAG = "esper-standin/debian:bookworm"
STANDIN_LABEL = "org.esper.standin"
DEPLOY = Path(__file__).resolve().parent.parent
#: stand-in Dockerfile -> the upstream tag it stands in for (the compose file's defaults).
STANDINS = {
    "python": "python:3.11-slim-bookworm",
    "redis": "redis:7.0",
    "postgres": "postgres:15",
    "prometheus": "prom/prometheus:v2.42.0",
}
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

Run = Callable[..., subprocess.CompletedProcess[str]]


def image_labels(docker: str, tag: str) -> dict[str, str] | None:
    """The image's labels, or None when no image has that tag."""
    done = subprocess.run(
        [docker, "image", "inspect", "--format", "{{json .Config.Labels}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    import json

    return json.loads(done.stdout.strip() or "null") or {}


def debian_mirror() -> str:
    """The first ``URIs:`` of Debian's apt sources (this machine's mirror), else deb.debian.org."""
    if DEBIAN_SOURCES.exists():
        for line in DEBIAN_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return DEFAULT_MIRROR


def ensure_base(docker: str, run: Run, workdir: Path) -> str:
    """Import the debootstrapped base unless it exists; returns what was done."""
    if image_labels(docker, BASE_TAG) is not None:
        return f"reused {BASE_TAG}"
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (Debian package debootstrap)")
    root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=workdir))
    try:
        run(["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()], log_name="debootstrap")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run([docker, "import", "-", BASE_TAG], stdin=tar.stdout, log_name="import")
        tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return f"debootstrapped and imported {BASE_TAG}"


def standin_context(workdir: Path) -> Path:
    """A build context with the stand-in files, this machine's apt sources and extra CA certificates."""
    ctx = workdir / "standin-context"
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.copytree(DEPLOY / "standins", ctx)
    certs = ctx / "certs"
    certs.mkdir()
    for crt in glob.glob("/usr/local/share/ca-certificates/*.crt"):
        shutil.copy(crt, certs)
    if DEBIAN_SOURCES.exists():
        shutil.copy(DEBIAN_SOURCES, ctx / "debian.sources")
    else:  # a machine with the classic sources.list: the base's own list then does the job
        (ctx / "debian.sources").write_text(
            f"Types: deb\nURIs: {debian_mirror()}\nSuites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    return ctx


def ensure_standins(docker: str, run: Run, workdir: Path, names: list[str]) -> list[str]:
    """Build the stand-ins ``names`` (keys of STANDINS) unless a real upstream image has the tag.

    They build side by side: most of their time is apt downloading, not the two cores.
    """
    ctx = standin_context(workdir)

    def build(name: str) -> str:
        tag = STANDINS[name]
        labels = image_labels(docker, tag)
        if labels is not None and STANDIN_LABEL not in labels:
            return f"{tag}: upstream image present, used as is"
        run(
            [
                docker,
                "build",
                "-q",
                "--network",
                "host",
                "--label",
                f"{STANDIN_LABEL}={name}",
                "-f",
                str(ctx / f"{name}.Dockerfile"),
                "-t",
                tag,
                str(ctx),
            ],
            log_name=f"standin-{name}",
            env_extra={"DOCKER_BUILDKIT": "1"},
        )
        return f"{tag}: {'rebuilt (cached)' if labels is not None else 'built'} stand-in"

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(build, names))  # re-raises the first failure
