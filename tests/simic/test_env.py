"""The Simic environment: real Tolaria runs as episodes, variants that never overlap, the reward's terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from esper.leyline import SeedStage
from esper.simic.env import EnvConfig, RewardConfig, TamiyoEnv
from esper.simic.flat import FlatTamiyoEnv
from esper.simic.variants import HELDOUT_SEEDS, TRAIN_SEEDS, Variant, load_variant, variant
from esper.simic.vector import make_vector_env

TINY = EnvConfig(epochs=3, pool=2, max_train_samples=200, samples=600)


def test_the_flat_variant_passes_gymnasiums_env_checker():
    env = FlatTamiyoEnv(TINY)
    try:
        check_env(env, skip_render_check=True)
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs)
        assert info["action_mask"]["ops"].tolist() == [True, True, False, False, False]
    finally:
        env.close()


def test_an_episode_is_one_training_run_whose_decisions_go_through_the_safety_monitor():
    env = TamiyoEnv(EnvConfig(epochs=4, pool=2, max_train_samples=300, samples=600))
    try:
        obs, info = env.reset(seed=0, options={"variant": 0})
        assert obs.signals.epoch == 1 and len(obs.graph.slots) == 3
        obs, reward, terminated, _, info = env.step(np.array([1, 1, 2]))  # germinate option 2 at s2
        assert not terminated and math.isfinite(reward)
        assert obs.signals.seeds[1].stage is SeedStage.GERMINATED
        assert obs.signals.seeds[1].blueprint == obs.graph.slots[1].options[2].blueprint
        obs, reward, terminated, _, info = env.step(np.array([4, 0, 0]))  # fossilize a dormant slot: rejected
        decision = env.trainer.decisions[-1]
        assert not decision.accepted and decision.slot_id == "s1"
        obs, reward, terminated, _, info = env.step(np.array([0, 0, 0]))
        assert terminated and obs.signals.epoch == 4
        final = info["final"]
        assert 0.0 <= final["test_accuracy"] <= 1.0 and final["params"] > final["params_initial"]
    finally:
        env.close()


def test_without_rent_or_terminal_terms_the_returns_telescope_to_the_accuracy_gained():
    reward = RewardConfig(rent=0.0, gamma=1.0, terminal=0.0, terminal_rent=0.0)
    env = TamiyoEnv(EnvConfig(epochs=4, pool=1, max_train_samples=200, samples=600, reward=reward))
    try:
        obs, _ = env.reset(seed=1)
        first, total, done = obs.signals.val_accuracy, 0.0, False
        actions = iter([[1, 0, 1], [2, 0, 0], [0, 0, 0]])
        while not done:
            obs, r, done, _, _ = env.step(np.array(next(actions)))
            total += r
        # potential-based shaping cancels over an episode (phi is 0 at the start and at the end)
        assert total == pytest.approx(obs.signals.val_accuracy - first, abs=1e-9)
    finally:
        env.close()


def test_training_and_heldout_variants_never_share_a_seed_and_regenerate_identically():
    assert not set(TRAIN_SEEDS) & set(HELDOUT_SEEDS)
    train = {variant("train", i).variant_id for i in range(50)}
    heldout = {variant("heldout", i).variant_id for i in range(50)}
    assert not train & heldout and variant("heldout", 3).split == "heldout"
    v = Variant("mnist1d", 1_234, samples=600)
    a, b = load_variant(v), load_variant(Variant("mnist1d", 1_234, samples=600))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    other = load_variant(Variant("mnist1d", 1_235, samples=600))
    assert not torch.equal(a.train.x, other.train.x)
    with pytest.raises(ValueError, match="family"):
        Variant("cifar", 1)


def test_vectorized_envs_advance_together_and_reset_in_the_step_they_end():
    envs = make_vector_env(2, TINY, asynchronous=False)
    try:
        obs, _ = envs.reset(seed=0)
        assert len(obs) == 2
        _, _, done, _, _ = envs.step(np.array([[1, 0, 1], [0, 0, 0]]))
        obs, rewards, done, _, info = envs.step(np.zeros((2, 3), dtype=np.int64))
        assert done.all() and np.isfinite(rewards).all()
        assert all(o.signals.epoch == 1 for o in obs)  # SAME_STEP autoreset: already the next episode
        assert all(f.signals.epoch == 3 for f in info["final_obs"])
    finally:
        envs.close()
