"""Least privilege in the compose file and the chart: Redis ACL users, non-root read-only containers.

The ACL rules themselves are proven against a real redis-server in ``test_redis_acl``; here
the deployments are checked to wire them: the same ``users.acl`` for compose and chart, each
service given its own user, the default user's absence, and every container locked down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import CHART, find, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ACL = CHART / "files" / "redis" / "users.acl"
#: Services that use Redis (Urza does not) -> their ACL user.
REDIS_USERS = ("tamiyo", "tolaria", "nissa", "tezzeret")
#: Containers compose may leave writable: Grafana (no image here to prove it runs read-only).
WRITABLE_OK = {"grafana"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))["services"]


def acl_users() -> dict[str, str]:
    lines = [line for line in ACL.read_text().splitlines() if line.startswith("user ")]
    return {line.split()[1]: line for line in lines}


def test_the_acl_has_one_user_per_redis_service_and_the_default_user_off() -> None:
    users = acl_users()
    assert users["default"].split()[2] == "off"
    assert set(users) == {"default", "admin", *REDIS_USERS}
    for name in REDIS_USERS:
        assert re.search(rf">\$\{{REDIS_{name.upper()}_PASSWORD\}}", users[name]), name
        assert "-@all" in users[name] and "~*" not in users[name], f"{name} may touch every key"


def test_compose_gives_each_service_its_own_redis_user_and_redis_the_shared_acl() -> None:
    services = compose()
    for name in REDIS_USERS:
        env = services[name]["environment"]
        assert env["ESPER_REDIS_USERNAME"] == name
        assert f"REDIS_{name.upper()}_PASSWORD" in env["ESPER_REDIS_PASSWORD"]
    assert "ESPER_REDIS_USERNAME" not in services["urza"]["environment"]
    redis = services["redis"]
    assert redis["entrypoint"] == ["sh", "/etc/esper/redis/start.sh"]
    assert "./k8s/esper/files/redis:/etc/esper/redis:ro" in redis["volumes"]
    assert "--user admin" in redis["healthcheck"]["test"][1]


@pytest.mark.parametrize("name", sorted(set(compose()) - WRITABLE_OK))
def test_compose_containers_are_read_only_without_privileges(name: str) -> None:
    service = compose()[name]
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"]
    if name in ("redis", "postgres"):
        assert service["user"] in ("redis", "postgres")  # the images' own non-root users


@pytest.fixture(scope="module")
def docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


def test_the_chart_renders_the_same_acl_and_start_script(docs: list[dict[str, Any]]) -> None:
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-redis-acl"))
    assert config["data"]["users.acl"] == ACL.read_text()
    assert config["data"]["start.sh"] == (ACL.parent / "start.sh").read_text()
    redis = find(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["command"] == ["sh", "/etc/esper/redis/start.sh"]
    assert redis["args"][redis["args"].index("--appendfsync") + 1] == "always"
    passwords = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in redis["env"]}
    assert passwords == {f"REDIS_{u.upper()}_PASSWORD": u for u in ("admin", *REDIS_USERS)}


@pytest.mark.parametrize("name", REDIS_USERS)
def test_the_chart_gives_each_service_its_redis_user(docs: list[dict[str, Any]], name: str) -> None:
    container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["ESPER_REDIS_USERNAME"]["value"] == name
    assert env["ESPER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == name


def test_every_chart_container_is_non_root_read_only_and_unprivileged(helm: str) -> None:
    docs = render(
        helm,
        "-f",
        str(CHART / "values-gpu.yaml"),
        "--set",
        "tolaria.job.enabled=true",
        "--set",
        "tolaria.distributedJob.enabled=true",
    )
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert len(pods) >= 8
    for pod in pods:
        for container in pod["containers"]:
            context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            name = container["name"]
            assert context.get("runAsNonRoot") is True, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name


def test_acl_can_be_turned_off_for_a_redis_without_users(helm: str) -> None:
    docs = render(helm, "--set", "redis.acl.enabled=false")
    redis = find(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][0] == "redis-server" and "command" not in redis
    tamiyo = find(docs, "Deployment", "tamiyo")["spec"]["template"]["spec"]["containers"][0]
    assert "ESPER_REDIS_USERNAME" not in {e["name"] for e in tamiyo["env"]}
