"""The compose files: start order by health, Redis durability, secrets from the env file, the overrides."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Every service with a Dockerfile, and the port it exposes.
PORTS = {
    d.parent.name: int(re.search(r"^EXPOSE (\d+)", d.read_text(), flags=re.M).group(1))  # type: ignore[union-attr]
    for d in sorted((ROOT / "services").glob("*/Dockerfile"))
}
ESPER_SERVICES = tuple(PORTS)


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / name).read_text()))


def test_redis_keeps_acknowledged_messages_and_never_evicts() -> None:
    command = load("docker-compose.yml")["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # what the delivery guarantees assume
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    host = load("docker-compose.host.yml")["services"]["redis"]["command"]
    assert host[host.index("--appendonly") + 1] == "yes" and "noeviction" in host
    assert host[host.index("--appendfsync") + 1] == "always"


def test_services_start_in_order_of_health() -> None:
    services = load("docker-compose.yml")["services"]
    for name in ("redis", "postgres", "prometheus"):
        assert services[name]["healthcheck"]["test"], name
    for name in ESPER_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["build"]["dockerfile"] == f"services/{name}/Dockerfile"
    assert services["urza"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["tezzeret"]["depends_on"]["urza"]["condition"] == "service_healthy"
    for name in ESPER_SERVICES:
        assert services["prometheus"]["depends_on"][name]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_named_volumes_for_redis_postgres_blobs_and_runs() -> None:
    compose = load("docker-compose.yml")
    assert {"redis-data", "postgres-data", "blobs", "runs"} <= set(compose["volumes"])
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]
    for name in ("tolaria", "nissa"):
        assert "runs:/var/lib/esper/runs" in compose["services"][name]["volumes"]
    assert "blobs:/var/lib/esper/blobs" in compose["services"]["urza"]["volumes"]


def test_every_required_variable_is_in_the_env_example() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"ESPER_API_TOKEN", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    example = dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert required <= set(example), required - set(example)


def test_every_service_is_on_the_host_network_in_the_host_override() -> None:
    base = load("docker-compose.yml")["services"]
    host = load("docker-compose.host.yml")["services"]
    assert set(base) == set(host)
    for name, service in host.items():
        assert service["network_mode"] == "host", name
    for name in ESPER_SERVICES:
        assert host[name]["build"]["network"] == "host"


def test_the_gpu_override_reserves_nvidia_gpus_for_tolaria_and_builds_cuda_torch() -> None:
    tolaria = load("docker-compose.gpu.yml")["services"]["tolaria"]
    devices = tolaria["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "cu1" in tolaria["build"]["args"]["TORCH_INDEX_URL"]
    assert tolaria["environment"]["ESPER_DEVICE"] == "cuda"


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert {"tamiyo", "tolaria", "nissa", "urza", "tezzeret"} <= set(ESPER_SERVICES)
    for name in ESPER_SERVICES:
        assert targets[name] == [f"{name}:{PORTS[name]}"]


def test_mounted_files_exist() -> None:
    for service in load("docker-compose.yml")["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
