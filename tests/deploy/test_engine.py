"""The engine ``make compose-test`` starts: one config file, the machine's settings under this run's.

dockerd refuses to start when a setting is given both as a flag and in its config file, which is
how CI failed on a machine whose /etc/docker/daemon.json already said ``"bridge": "none"``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from engine import NETWORK_SETTINGS, Engine, EngineError, daemon_config


@pytest.fixture(autouse=True)
def _own_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ESPER_DOCKERD_DATA_ROOT", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")


def test_without_a_machine_config_the_engine_gets_the_network_and_socket_settings(tmp_path: Path) -> None:
    settings = daemon_config(tmp_path / "absent.json")
    assert settings == {**NETWORK_SETTINGS, "hosts": [f"unix://{tmp_path}/docker.sock"]}


def test_the_machine_config_is_kept_and_this_runs_settings_go_over_it(tmp_path: Path) -> None:
    system = tmp_path / "daemon.json"
    system.write_text(json.dumps({"bridge": "docker0", "iptables": False, "log-level": "warn", "hosts": ["fd://"]}))
    settings = daemon_config(system)
    assert settings["log-level"] == "warn"  # the machine's own settings stay
    assert settings["bridge"] == "none" and settings["iptables"] is False and settings["ip-masq"] is False
    assert settings["hosts"] == [f"unix://{tmp_path}/docker.sock"]


def test_a_second_engine_keeps_its_state_apart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ESPER_DOCKERD_DATA_ROOT", str(tmp_path / "fresh"))
    settings = daemon_config(tmp_path / "absent.json")
    assert settings["data-root"] == str(tmp_path / "fresh")
    assert settings["exec-root"] == "/run/fresh" and settings["pidfile"] == "/run/fresh.pid"


@pytest.mark.parametrize(
    ("text", "says"), [("{bridge: none", "not valid JSON"), ('["bridge"]', "expected a JSON object")]
)
def test_a_broken_machine_config_is_named(tmp_path: Path, text: str, says: str) -> None:
    system = tmp_path / "daemon.json"
    system.write_text(text)
    with pytest.raises(EngineError, match=says) as raised:
        daemon_config(system)
    assert str(system) in str(raised.value)


def test_a_tcp_docker_host_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    with pytest.raises(EngineError, match=re.escape("DOCKER_HOST='tcp://10.0.0.1:2375'")):
        daemon_config(tmp_path / "absent.json")


def test_dockerd_is_started_with_the_config_file_and_no_setting_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stand-in dockerd records its command line and exits, so ``ensure`` reports the exit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv = tmp_path / "argv"
    for tool, body in (
        ("dockerd", f'printf "%s\\n" "$@" > {argv}\necho "stand-in dockerd stops here"\nexit 1'),
        ("docker-compose", "exit 0"),
        ("debootstrap", "exit 0"),
        ("docker", "exit 1"),  # no engine answers
    ):
        script = bin_dir / tool
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("engine.docker_client", lambda: str(bin_dir / "docker"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(EngineError, match=r"dockerd exited at start:\nstand-in dockerd stops here"):
        Engine(work).ensure(timeout_s=20.0)
    assert argv.read_text().split() == [f"--config-file={work / 'daemon.json'}"]
    written = json.loads((work / "daemon.json").read_text())
    assert written["bridge"] == "none" and written["hosts"] == [f"unix://{tmp_path}/docker.sock"]
