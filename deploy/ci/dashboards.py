"""The Grafana dashboards as data: their PromQL, the metric names it reads, and the metric names the code exports.

Used by ``tests/deploy`` (every queried metric is exported; every expression parses, through
``promtool``) and by ``make compose-test`` (every panel's query returns data from the real
Prometheus after a run). Grafana's template variables are replaced by values Prometheus
accepts (:data:`CHECK_VARIABLES`) before an expression is parsed or run.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
#: Where exported metrics are defined: every library and service.
SOURCE_ROOTS = (ROOT / "libs", ROOT / "services")
#: Grafana variables -> what a check substitutes (every run; a typical rate window).
CHECK_VARIABLES = {"$run_id": ".+", "${run_id}": ".+", "$__rate_interval": "1m", "$__interval": "15s"}
#: Series Prometheus adds to every scrape target.
PROMETHEUS_SYNTHETIC = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)
_METRIC_CLASSES = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
        "start",
        "end",
    }
)


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression of a dashboard: a panel target or an annotation."""

    dashboard: str
    where: str  # panel title (and refId) or "annotation <name>"
    expr: str

    def resolved(self) -> str:
        """The expression with Grafana's variables replaced (see CHECK_VARIABLES)."""
        out = self.expr
        for name, value in sorted(CHECK_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            out = out.replace(name, value)
        return out


def load(path: Path) -> dict[str, object]:
    """One dashboard file as JSON (a ValueError names the file when it is not JSON)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: a dashboard is a JSON object")
    return data


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def queries(path: Path) -> list[Query]:
    """Every target expression of every panel (rows' nested panels included) and every annotation."""
    board = load(path)
    out: list[Query] = []

    def walk(panels: object) -> None:
        for panel in panels if isinstance(panels, list) else []:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append(Query(path.name, f"{panel.get('title')} [{target.get('refId')}]", target["expr"]))
            walk(panel.get("panels", []))

    walk(board.get("panels", []))
    templating = board.get("templating", {})
    for var in templating.get("list", []) if isinstance(templating, dict) else []:
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.fullmatch(r"\s*label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", text)
        if var.get("type") == "query" and m:  # Grafana's label_values(SERIES, LABEL): SERIES is PromQL
            out.append(Query(path.name, f"variable {var.get('name')}", m.group(1)))
    annotations = board.get("annotations", {})
    for ann in annotations.get("list", []) if isinstance(annotations, dict) else []:
        if ann.get("expr"):
            out.append(Query(path.name, f"annotation {ann.get('name')}", ann["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = m.group(0)
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", name) or text[m.start() - 1 : m.start()].isdigit():
            continue
        names.add(name)
    return names


def exported_metrics(roots: tuple[Path, ...] = SOURCE_ROOTS) -> dict[str, str]:
    """Sample name -> defining file, for every prometheus_client metric the code constructs.

    Reads the source (so a service need not be importable here): calls of ``Counter``,
    ``Gauge``, ``Histogram`` or ``Summary`` imported from ``prometheus_client`` whose first
    argument is a string literal, expanded to the series names Prometheus sees (a counter
    ``x`` is ``x_total``; a histogram adds ``_bucket``, ``_count``, ``_sum``).
    """
    out: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            imported = {
                alias.asname or alias.name: alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prometheus_client")
                for alias in node.names
                if alias.name in _METRIC_CLASSES
            }
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                kind = _METRIC_CLASSES.get(imported.get(node.func.id, ""))
                if kind is None or not node.args:
                    continue
                first = node.args[0]
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    continue
                base = first.value
                if kind == "counter":
                    base = base.removesuffix("_total")
                for suffix in _SUFFIXES[kind]:
                    out[base + suffix] = str(path.relative_to(ROOT))
    return out


def client_default_metrics() -> set[str]:
    """What prometheus_client's default registry adds in every service (process_*, python_gc_*, python_info)."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def unexported(queries_: list[Query], exported: set[str]) -> list[str]:
    """'dashboard: where: name' for each metric a query reads that nobody exports."""
    return [
        f"{q.dashboard}: {q.where}: {name}"
        for q in queries_
        for name in sorted(metric_names(q.resolved()))
        if name not in exported
    ]


def rules_file(queries_: list[Query]) -> str:
    """A Prometheus rules file with one recording rule per expression, for ``promtool check rules``."""
    rules = [
        {"record": f"esper:dashboard_check:{i}", "expr": q.resolved(), "labels": {"where": f"{q.dashboard} {q.where}"}}
        for i, q in enumerate(queries_)
    ]
    return json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}, indent=1)
