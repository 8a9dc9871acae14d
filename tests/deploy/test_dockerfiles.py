"""Each service Dockerfile runs a module its own packages install, with a healthcheck, as a non-root user."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import deploy_check
import pytest

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "services").glob("*/Dockerfile")), ids=lambda p: p.parent.name)
def test_service_dockerfiles_pass(dockerfile: Path) -> None:
    assert deploy_check.dockerfile_problems(dockerfile) == []


def test_every_deployed_service_has_a_dockerfile() -> None:
    for name in ("tamiyo", "tolaria", "nissa", "urza", "tezzeret"):
        assert (ROOT / "services" / name / "Dockerfile").exists()


def test_a_dockerfile_whose_entrypoint_is_not_installed_is_flagged(tmp_path: Path) -> None:
    text = (ROOT / "services/nissa/Dockerfile").read_text()
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace("esper.nissa.service", "esper.nissa.nowhere").replace("USER 10001", "USER root"))
    problems = deploy_check.dockerfile_problems(bad)
    assert any("esper.nissa.nowhere is not a module" in p for p in problems)
    assert any("root" in p for p in problems)
    bad.write_text(text.replace("HEALTHCHECK", "# HEALTHCHECK"))
    assert deploy_check.dockerfile_problems(bad) == ["no HEALTHCHECK"]


def test_a_dockerfile_missing_a_package_its_packages_need_is_flagged(tmp_path: Path) -> None:
    text = (ROOT / "services/nissa/Dockerfile").read_text()
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        text.replace('ESPER_PACKAGES="libs/leyline libs/oona libs/service', 'ESPER_PACKAGES="libs/leyline libs/service')
    )
    assert "libs/service needs esper-oona, which ESPER_PACKAGES does not install" in deploy_check.dockerfile_problems(
        bad
    )


def test_the_dockerignore_keeps_the_venv_runs_and_caches_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "**/__pycache__", ".git"} <= set(ignored)


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def probe(port: int) -> int:
    env = {"ESPER_NISSA_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "nissa"], env=env, capture_output=True, timeout=20, check=False
    ).returncode


def test_the_container_healthcheck_follows_readyz(server: http.server.HTTPServer) -> None:
    port = server.server_address[1]
    _Ready.status = 200
    assert probe(port) == 0
    _Ready.status = 503
    assert probe(port) == 1
    server.shutdown()
    server.server_close()
    assert probe(port) == 1
