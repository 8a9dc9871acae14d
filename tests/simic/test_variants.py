"""Variant families: the label-noise family keeps its clean twin's inputs and test labels, and says how noisy it is."""

from __future__ import annotations

import numpy as np
import pytest

from esper.simic.compare import resolve_tasks
from esper.simic.variants import MAX_LABEL_NOISE, Variant, label_noise, load_variant, variant


def test_a_noisy_variant_is_its_clean_twin_with_the_drawn_share_of_training_labels_wrong():
    shares = []
    for seed in range(1_000, 1_003):
        noisy, clean = load_variant(Variant("mnist1d-noisy", seed, 600)), load_variant(Variant("mnist1d", seed, 600))
        share = label_noise(Variant("mnist1d-noisy", seed))
        assert 0.0 <= share <= MAX_LABEL_NOISE
        shares.append(share)
        rows = np.concatenate([noisy.train.y.numpy(), noisy.val.y.numpy()])
        twin = np.concatenate([clean.train.y.numpy(), clean.val.y.numpy()])
        assert np.array_equal(noisy.train.x.numpy(), clean.train.x.numpy())
        assert abs((rows != twin).mean() - share) <= 1 / len(rows)  # every chosen label moved to another class
        assert np.array_equal(noisy.test.y.numpy(), clean.test.y.numpy())  # test labels stay right
        assert set(np.unique(rows)) <= set(range(10))
    assert len(set(shares)) == len(shares)  # drawn per variant
    assert label_noise(Variant("mnist1d", 1_000)) == label_noise(Variant("digits", 1_000)) == 0.0


def test_the_noisy_family_is_named_not_defaulted_and_resolves_by_id():
    assert {variant("train", i).family for i in range(10)} == {"mnist1d", "digits"}  # earlier variants unchanged
    picked = [variant("heldout", i, families=("mnist1d", "mnist1d-noisy")).family for i in range(4)]
    assert picked == ["mnist1d", "mnist1d-noisy", "mnist1d", "mnist1d-noisy"]
    assert resolve_tasks(["mnist1d-noisy-900001"]) == [Variant("mnist1d-noisy", 900_001)]
    with pytest.raises(ValueError, match=r"field 'family'.*'mnist1d-loud'"):
        Variant("mnist1d-loud", 1)
