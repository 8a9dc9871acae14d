"""Comparing policies on the same (task, seed) pairs, with a bootstrap interval on the paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from esper.simic.compare import bootstrap_median, compare, resolve_tasks, table
from esper.simic.env import EnvConfig
from esper.simic.variants import Variant


def test_every_policy_runs_every_pair_and_the_difference_gets_an_interval():
    env = EnvConfig(epochs=2, max_train_samples=100, samples=600, split="heldout")
    tasks = [Variant("digits", 900_001, samples=600)]
    summary = compare(["none", "heuristic"], tasks, 2, env, resamples=200)
    assert len(summary["runs"]) == 4
    pairs = {(r["policy"], r["seed"]) for r in summary["runs"]}
    assert pairs == {(p, s) for p in ("none", "heuristic") for s in (0, 1)}
    static = [r for r in summary["runs"] if r["policy"] == "none"]
    assert all(r["params"] == r["params_initial"] and r["actions"] == 0 for r in static)
    diff = summary["differences"]["heuristic"]
    assert diff["against"] == "none" and diff["ci_low"] <= diff["median_difference"] <= diff["ci_high"]
    assert summary["policies"]["heuristic"]["params"] > summary["policies"]["none"]["params"]
    text = table(summary)
    assert "baseline" in text and "heuristic" in text


def test_bootstrap_interval_excludes_zero_for_a_consistent_gain_and_not_for_noise():
    rng = np.random.default_rng(0)
    low, high = bootstrap_median(0.05 + 0.01 * rng.standard_normal(15))
    assert 0 < low < 0.05 < high
    low, high = bootstrap_median(rng.standard_normal(15))
    assert low < 0 < high


def test_task_names_resolve_to_heldout_variants_or_fail_naming_the_field():
    assert [v.variant_id for v in resolve_tasks(["heldout:2"])] == ["mnist1d-900000", "digits-900001"]
    assert resolve_tasks(["digits-900007"])[0].seed == 900_007
    assert resolve_tasks(["cifar10", "digits", "mypkg.tasks:build"]) == ["cifar10", "digits", "mypkg.tasks:build"]
    with pytest.raises(ValueError, match="field 'tasks'"):
        resolve_tasks(["imagenet-1k"])
    with pytest.raises(ValueError, match="field 'tasks'"):
        resolve_tasks(["heldout:x"])
