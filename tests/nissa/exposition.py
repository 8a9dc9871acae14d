"""Read metric values back from the Prometheus text exposition, as a scraper would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from esper.nissa import NissaMetrics


def samples(metrics: NissaMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed from ``metrics.exposition()``."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: NissaMetrics, name: str, **labels: str) -> float:
    """The value of one sample; KeyError naming what exists when it is absent."""
    table = samples(metrics)
    key = (name, frozenset(labels.items()))
    if key not in table:
        present = sorted(str(dict(k[1])) for k in table if k[0] == name)
        raise KeyError(f"no sample {name}{labels}; present: {present}")
    return table[key]
