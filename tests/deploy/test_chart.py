"""The Helm chart rendered by the real helm: GPU scheduling, probes on the real routes, labels, external stores."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "esper"


def render(helm: str, *flags: str) -> list[dict[str, Any]]:
    done = subprocess.run([helm, "template", "esper", str(CHART), *flags], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


def find(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["labels"].get("app.kubernetes.io/component") == component:
            return d
    raise AssertionError(f"no {kind} for {component}")


def test_gpu_values_put_tolaria_on_gpu_nodes(helm: str) -> None:
    docs = render(helm, "-f", str(CHART / "values-gpu.yaml"))
    pod = find(docs, "Deployment", "tolaria")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    tamiyo = find(docs, "Deployment", "tamiyo")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in tamiyo["containers"][0]["resources"]["limits"]
    # and trains there: a pod that cannot see its GPU refuses jobs instead of training on the CPU
    assert {"name": "ESPER_DEVICE", "value": "cuda"} in container["env"]


def test_default_values_ask_for_no_gpu(default_docs: list[dict[str, Any]]) -> None:
    pod = find(default_docs, "Deployment", "tolaria")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod
    assert all(e["name"] != "ESPER_DEVICE" for e in pod["containers"][0]["env"])


@pytest.mark.parametrize(("values", "device"), [((), "cpu"), (("-f", str(CHART / "values-gpu.yaml")), "cuda")])
def test_the_distributed_job_s_ranks_train_on_the_values_device(
    helm: str, values: tuple[str, ...], device: str
) -> None:
    docs = render(helm, *values, "--set", "tolaria.distributedJob.enabled=true")
    job = next(d for d in docs if d["kind"] == "Job" and "-ddp-" in d["metadata"]["name"])
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "ESPER_DEVICE", "value": device} in env


@pytest.mark.parametrize("component", ["tamiyo", "tolaria", "nissa", "urza", "tezzeret"])
def test_probes_requests_labels_and_token(default_docs: list[dict[str, Any]], component: str) -> None:
    deployment = find(default_docs, "Deployment", component)
    labels = deployment["metadata"]["labels"]
    for key in ("name", "instance", "version", "component", "managed-by"):
        assert f"app.kubernetes.io/{key}" in labels
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ESPER_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "api-token"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_external_redis_and_postgres_replace_the_in_chart_ones(helm: str) -> None:
    docs = render(
        helm,
        "--set",
        "redis.enabled=false",
        "--set",
        "redis.externalUrl=redis://r.example:6379/1",
        "--set",
        "postgresql.enabled=false",
        "--set",
        "postgresql.externalUrl=postgresql://u@db.example/urza",
    )
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config["data"]["redis-url"] == "redis://r.example:6379/1"
    urza = find(docs, "Deployment", "urza")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in urza["env"]}
    assert env["ESPER_URZA_DATABASE_URL"] == "postgresql://u@db.example/urza"


def test_urza_reads_the_in_chart_postgres_password_from_its_secret(default_docs: list[dict[str, Any]]) -> None:
    urza = find(default_docs, "Deployment", "urza")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in urza["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "esper-postgresql"
    assert "$(POSTGRES_PASSWORD)@esper-postgresql:5432/urza" in env["ESPER_URZA_DATABASE_URL"]["value"]


def test_external_redis_without_a_url_is_refused_by_the_schema(helm: str) -> None:
    done = subprocess.run(
        [helm, "template", "esper", str(CHART), "--set", "redis.enabled=false"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "externalUrl" in done.stderr


def test_service_monitor_only_with_the_prometheus_operator(helm: str, default_docs: list[dict[str, Any]]) -> None:
    assert not [d for d in default_docs if d["kind"] == "ServiceMonitor"]
    monitors = [d for d in render(helm, "--api-versions", "monitoring.coreos.com/v1") if d["kind"] == "ServiceMonitor"]
    assert monitors[0]["spec"]["endpoints"][0]["path"] == "/metrics"


def test_one_run_job_submits_through_the_control_api(helm: str) -> None:
    job = find(
        render(helm, "--set", "tolaria.job.enabled=true", "--set", "tolaria.job.spec.epochs=3"), "Job", "tolaria-job"
    )
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ESPER_API_URL"] == "http://esper-tamiyo:8700"
    assert '"epochs":3' in env["ESPER_JOB"]
