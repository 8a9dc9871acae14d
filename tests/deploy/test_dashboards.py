"""The Grafana dashboards: structure, every metric they query is exported by the code, every expression parses."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import dashboards
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

QUERIES = [q for f in dashboards.dashboard_files() for q in dashboards.queries(f)]


@functools.cache
def source_metrics() -> dict[str, str]:
    return dashboards.exported_metrics()  # parses every module under libs/ and services/: once


def exported() -> set[str]:
    return set(source_metrics()) | dashboards.client_default_metrics() | dashboards.PROMETHEUS_SYNTHETIC


def test_there_are_dashboards_with_queries() -> None:
    names = {f.name for f in dashboards.dashboard_files()}
    assert {"esper-training.json", "esper-tamiyo.json", "esper-bus.json"} <= names
    assert len(QUERIES) >= 20


@pytest.mark.parametrize("path", dashboards.dashboard_files(), ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = dashboards.load(path)
    assert board["uid"] == path.stem and board["title"].startswith("Esper / ")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], f"{panel['title']} queries nothing"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, f"{panel['title']} reads a data source Grafana is not given"


def test_every_queried_metric_is_exported_by_the_code() -> None:
    assert dashboards.unexported(QUERIES, exported()) == []


def test_a_metric_nobody_exports_is_reported() -> None:
    query = dashboards.Query("x.json", "panel [A]", 'rate(esper_not_a_metric_total{run_id=~"$run_id"}[5m])')
    assert dashboards.unexported([query], exported()) == ["x.json: panel [A]: esper_not_a_metric_total"]


def test_exported_metrics_are_read_from_the_source() -> None:
    names = source_metrics()
    # a Counter declared without _total, a histogram, a gauge with labels, from three packages
    assert names["esper_tolaria_epochs_total"].startswith("services/tolaria")
    assert "esper_tamiyo_decision_latency_seconds_bucket" in names
    assert names["esper_oona_consumer_group_pending"].startswith("libs/oona")
    assert "esper_tolaria_epochs" not in names  # what Prometheus sees is the _total series


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x=~"y|z"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (le, group) (rate(b_bucket[1m])))", {"b_bucket"}),
        ('up{job=~"tamiyo|nissa"} == 1 and on (job) c_total offset 5m', {"up", "c_total"}),
        ('changes(d_total{run_id=~"$run_id"}[1m]) > 0', {"d_total"}),
    ],
)
def test_metric_names_in_an_expression(expr: str, names: set[str]) -> None:
    assert dashboards.metric_names(dashboards.Query("x", "y", expr).resolved()) == names


def test_the_issue_s_panels_are_there() -> None:
    read = {name for q in QUERIES for name in dashboards.metric_names(q.resolved())}
    wanted = {
        "esper_val_accuracy",
        "esper_val_loss",
        "esper_seeds",  # training progress, seeds by stage
        "esper_tamiyo_decisions_total",
        "esper_decisions_rejected_total",  # decisions, rejections by reason
        "esper_tamiyo_decision_latency_seconds_bucket",  # decision latency
        "esper_oona_published_total",
        "esper_oona_consumed_total",  # bus throughput
        "esper_oona_consumer_group_pending",
        "esper_oona_dead_lettered_total",  # pending and dead letters
        "up",  # service health
    }
    assert wanted <= read, wanted - read
    training = dashboards.load(DEPLOY / "grafana/dashboards/esper-training.json")
    seed_events = [a for a in training["annotations"]["list"] if "esper_seed_transitions_total" in a.get("expr", "")]
    assert seed_events, "seed events are not annotations on the training dashboard"


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(dashboards.rules_file(QUERIES))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(QUERIES)} rules found" in done.stdout


def test_a_broken_expression_does_not_parse(promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(dashboards.rules_file([dashboards.Query("x", "y", "sum by (le (rate(a[1m]))")]))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert done.returncode != 0


def test_grafana_is_provisioned_with_these_dashboards() -> None:
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/esper.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    assert json.loads((DEPLOY / "grafana/dashboards/esper-training.json").read_text())["templating"]["list"]
